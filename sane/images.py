"""The one place where images (paths, bytes, PIL images) become normalised model tensors and back."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sane.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Refuse images above this many pixels (decompression bombs); 64 MP is far above any real photo.
MAX_PIXELS = 64_000_000


RESIZE_POLICIES = ("squash", "crop")
INTERPOLATIONS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: square side, resize policy, interpolation and normalisation.

    ``resize="squash"`` resizes the whole image to ``size`` x ``size`` (aspect ratio not kept; our
    models' habit). ``resize="crop"`` resizes the shorter side to ``resize_size`` (default ``size``)
    and takes the centre ``size`` x ``size`` crop (torchvision's and CLIP's habit: ImageNet models use
    256 then 224). ``interpolation`` is one of :data:`INTERPOLATIONS`.
    """

    size: int = 112
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"
    interpolation: str = "bilinear"
    resize_size: int | None = None

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise InputError(f"input size must be a whole number >= 1, got {self.size!r}", "input_size")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in value):
                raise InputError(f"{name} must be three numbers (R, G, B), got {value!r}", name)
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(v <= 0 for v in self.std):
            raise InputError(f"std must be positive, got {self.std!r}", "std")
        if self.resize not in RESIZE_POLICIES:
            raise InputError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}", "resize")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}",
                             "interpolation")
        if self.resize_size is not None and (self.resize != "crop" or self.resize_size < self.size):
            raise InputError(f"resize_size ({self.resize_size}) needs resize='crop' and must be >= the input size "
                             f"({self.size})", "resize_size")

    def to_dict(self) -> dict:
        """Plain JSON-able form (checkpoints, metadata files, archives)."""
        return {"input_size": self.size, "mean": list(self.mean), "std": list(self.std), "resize": self.resize,
                "interpolation": self.interpolation, "resize_size": self.resize_size}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        """Inverse of :meth:`to_dict` (older checkpoints hold only input_size, mean and std)."""
        return cls(int(data["input_size"]), tuple(data["mean"]), tuple(data["std"]), data.get("resize", "squash"),
                   data.get("interpolation", "bilinear"), data.get("resize_size"))

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the part of a ``width`` x ``height`` image the model sees."""
        if self.resize == "squash":
            return (0, 0, width, height)
        scale = (self.resize_size or self.size) / min(width, height)
        side_w, side_h = self.size / scale, self.size / scale  # the crop, in original pixels
        left, top = (width - side_w) / 2, (height - side_h) / 2
        return (round(left), round(top), round(left + side_w), round(top + side_h))

    @property
    def decode_side(self) -> int:
        """The smallest side a decoded image needs for the model's resize (JPEG draft decoding)."""
        return self.resize_size or self.size

    @property
    def max_pixels(self) -> int:
        """Decoded pixels a request may hold for this model: (32 x its input side)^2, at least 16 MP,
        at most :data:`MAX_PIXELS` (a JPEG is decoded at a reduced scale first, so larger ones pass, up
        to PIL's own decompression-bomb limit on the file's size)."""
        return min(MAX_PIXELS, max(16_000_000, (32 * self.decode_side) ** 2))

    def open(self, source, field: str = "image") -> Image.Image:
        """:func:`open_image` as this model needs it: JPEGs decoded at a reduced scale that keeps
        :attr:`decode_side`, the pixel cap of :attr:`max_pixels`."""
        return open_image(source, field, draft=self.decode_side, max_pixels=self.max_pixels)

    def visible(self, image: Image.Image) -> Image.Image:
        """The part of ``image`` the model sees, at the image's own resolution (overlays, attributes)."""
        box = self.crop_box(*image.size)
        return image if box == (0, 0, *image.size) else image.crop(box)

    def view(self, image: Image.Image) -> Image.Image:
        """The RGB PIL image at the model's size, as the model sees it (resized, maybe cropped)."""
        resample = INTERPOLATIONS[self.interpolation]
        if self.resize == "squash":
            return image if image.size == (self.size, self.size) else image.resize((self.size, self.size), resample)
        w, h = image.size
        short = self.resize_size or self.size
        scale = short / min(w, h)
        new_w, new_h = max(short, round(w * scale)), max(short, round(h * scale))
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised (3, size, size) float tensor (see :meth:`view`)."""
        arr = np.asarray(self.view(image), dtype=np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (t - mean) / std

    def to_image(self, tensor: torch.Tensor) -> Image.Image:
        """Normalised (3, H, W) tensor -> RGB PIL image (inverse of :meth:`to_tensor` up to resizing)."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        arr = ((tensor.detach().float().cpu() * std + mean).clamp(0, 1) * 255).round().byte()
        return Image.fromarray(arr.permute(1, 2, 0).numpy())

    def constant(self, value: float = 127 / 255) -> torch.Tensor:
        """A (3, 1, 1) normalised tensor of a constant grey (0..1 scale), e.g. the metric substrate."""
        return (torch.full((3, 1, 1), value) - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(
            self.std
        ).view(3, 1, 1)


def open_image(source: str | os.PathLike | bytes | Image.Image, field: str = "image", draft: int | None = None,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a path, raw bytes or PIL image as an RGB PIL image.

    Grayscale, palette and CMYK images are converted; transparent pixels are composited on white.
    ``draft``: a JPEG is decoded at the smallest of 1/8, 1/4, 1/2 or full scale that keeps both sides
    at least ``draft`` pixels (libjpeg's DCT scaling: a 6000 x 6000 photo for a 224-px model decodes
    at 750 x 750, several times faster, in a 64th of the memory). ``max_pixels`` caps the decoded
    pixels (413 above it). Unreadable data and decompression bombs raise :class:`InputError` naming ``field``.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise InputError(f"{field}: empty image data", field)
            fp = io.BytesIO(bytes(source))
            name = field
        else:
            name = os.fspath(source)
            if not os.path.isfile(name):
                raise InputError(f"{field}: no such image file: {name}", field)
            fp = name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(fp)
                if draft is not None and image.format == "JPEG":
                    image.draft("RGB", (int(draft), int(draft)))
                if image.width * image.height > max_pixels:
                    raise InputError(
                        f"{field}: image is {image.width}x{image.height} pixels, above the limit of "
                        f"{max_pixels} pixels" + ("" if image.format == "JPEG" or draft is None else
                                                  " (a JPEG would be decoded at a reduced scale)"),
                        field,
                        status=413,
                    )
                image.load()
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"{field}: image too large (decompression bomb): {exc}", field, 413) from exc
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
            reason = str(exc).split(" <_io.")[0]  # PIL names the BytesIO object: noise for the user
            raise InputError(f"{field}: cannot read image {name!r}: {reason}", field) from exc
    return to_rgb(image, field)


def _high_depth_to_8bit(image: Image.Image, field: str) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale as 8-bit ``L``, scaled by the depth the values use.

    PIL's own ``convert`` clips these to 0..255, so a 16-bit photo would come out nearly all white.
    ``I;16*``: 0..65535. ``I`` (32-bit, what PNG/TIFF 16-bit data often opens as): 0..255 if it fits,
    else 0..65535. ``F``: 0..1 if it fits, else 0..255. Anything else is refused (the range is unknown).
    """
    arr = np.asarray(image, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{field}: a {image.mode} image with NaN or infinite pixels", field)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "I" and lo >= 0 and hi <= 65535:
        top = 255.0 if hi <= 255 else 65535.0
    elif image.mode == "F" and lo >= 0 and hi <= 255:
        top = 1.0 if hi <= 1 else 255.0
    else:
        raise InputError(f"{field}: {image.mode} image with values in [{lo:g}, {hi:g}]: expected 0..65535 (integer) "
                         "or 0..1 / 0..255 (float); send an 8- or 16-bit image", field)
    return Image.fromarray(np.round(arr * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image, field: str = "image") -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited on a white background; 16-bit, 32-bit and
    float greyscale are scaled by their depth (not clipped). A mode PIL cannot convert is a 400."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_8bit(image, field)
    try:
        if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (image.mode == "P" and "transparency" in image.info):
            if image.mode == "La":  # premultiplied alpha: PIL converts it through RGBa only
                image = image.convert("RGBa")
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:  # e.g. "conversion from X to Y not supported"
        raise InputError(f"{field}: cannot use a {image.mode} image: {exc}; send RGB or greyscale", field) from exc


def load_image(
    source: str | os.PathLike | bytes | Image.Image,
    preprocess: Preprocess | None = None,
    field: str = "image",
) -> torch.Tensor:
    """Path / bytes / PIL image -> normalised (3, H, W) tensor for the model (a JPEG decoded at the
    reduced scale the model's size allows, :meth:`Preprocess.open`)."""
    preprocess = preprocess or Preprocess()
    return preprocess.to_tensor(preprocess.open(source, field))
