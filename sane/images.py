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


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: square side and normalisation constants."""

    size: int = 112
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised (3, size, size) float tensor (squashed, not cropped)."""
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        arr = np.asarray(image, dtype=np.float32) / 255.0
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


def open_image(source: str | os.PathLike | bytes | Image.Image, field: str = "image") -> Image.Image:
    """Open a path, raw bytes or PIL image as an RGB PIL image.

    Grayscale, palette and CMYK images are converted; transparent pixels are composited on white.
    Unreadable data and decompression bombs raise :class:`InputError` naming ``field``.
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
                if image.width * image.height > MAX_PIXELS:
                    raise InputError(
                        f"{field}: image is {image.width}x{image.height} pixels, above the limit of "
                        f"{MAX_PIXELS} pixels",
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
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited on a white background."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    source: str | os.PathLike | bytes | Image.Image,
    preprocess: Preprocess | None = None,
    field: str = "image",
) -> torch.Tensor:
    """Path / bytes / PIL image -> normalised (3, H, W) tensor for the model."""
    return (preprocess or Preprocess()).to_tensor(open_image(source, field))
