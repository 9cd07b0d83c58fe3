"""What a similarity model is declared to be: its preprocessing and its embedding semantics.

A user's model (TorchScript, a ``torch.export`` program, a factory) says nothing about the images it
wants or how its outputs compare, so the library never assumes: a :class:`ModelSpec` declares the
input size, resize policy, interpolation and mean/std (:class:`~sane.images.Preprocess`, or a
preset of :data:`PRESETS`), which output is the embedding, whether to L2-normalise it and the
similarity function. It is stored with the model (in our checkpoints, in ``<model>.sane.json``
beside a user's file, in an archive as ``model_spec.json``), so the CLI, the evaluations and the
served worker all use the same one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sane.errors import InputError
from sane.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess

SIMILARITIES = ("cosine", "dot", "euclidean")
SPEC_SUFFIX = ".sane.json"  # the metadata file beside a user's model: vit.pt2 -> vit.sane.json
SPEC_FORMAT = 1

# Published preprocessing of common model families (the constants their own transforms use).
PRESETS: dict[str, Preprocess] = {
    # This project's own models: 112 px squashed, ImageNet statistics.
    "sane": Preprocess(112),
    # torchvision / timm ImageNet classifiers (ResNet, ViT-B/16 IMAGENET1K_V1): resize 256, crop 224.
    "imagenet": Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, "crop", "bilinear", 256),
    # OpenAI CLIP and open_clip: shorter side to 224 (bicubic), centre crop, CLIP's own statistics.
    "clip": Preprocess(224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711),
                       "crop", "bicubic"),
    # SigLIP: resized to 224 x 224 (bicubic), scaled to [-1, 1].
    "siglip": Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash", "bicubic"),
    # DINOv2: resize 256 (bicubic), crop 224, ImageNet statistics.
    "dinov2": Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, "crop", "bicubic", 256),
}


@dataclass(frozen=True)
class EmbeddingSpec:
    """How a model's output becomes comparable embeddings.

    ``output``: which output is the embedding when the model returns a tuple/list (an index) or a
    dict (a key); None for a plain tensor. ``similarity``: ``"cosine"`` (the default; embeddings are
    L2-normalised), ``"dot"`` or ``"euclidean"`` (the negative Euclidean distance). ``normalize``
    L2-normalises before ``dot``/``euclidean`` (None: only for cosine, which always normalises).
    """

    output: str | int | None = None
    similarity: str = "cosine"
    normalize: bool | None = None

    def __post_init__(self):
        if self.similarity not in SIMILARITIES:
            raise InputError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}",
                             "similarity")
        if self.similarity == "cosine" and self.normalize is False:
            raise InputError("cosine similarity compares L2-normalised embeddings: use similarity 'dot' for "
                             "unnormalised ones", "normalize")
        if isinstance(self.output, str) and self.output.lstrip("-").isdigit():
            object.__setattr__(self, "output", int(self.output))

    @property
    def l2(self) -> bool:
        """Whether embeddings are L2-normalised before they are compared."""
        return self.similarity == "cosine" or bool(self.normalize)

    @property
    def linear(self) -> bool:
        """Whether s(q, r) is linear in r (then the mean over references is one target)."""
        return self.similarity != "euclidean"

    def select(self, out: Any) -> torch.Tensor:
        """The embedding tensor among a model's outputs (see ``output``); a clear error otherwise."""
        if isinstance(out, torch.Tensor):
            if self.output is not None and not isinstance(self.output, int):
                raise InputError(f"output {self.output!r} was declared, but the model returns one tensor", "output")
            return out
        if isinstance(out, dict):
            keys = list(out)
            if self.output is None:
                raise InputError(f"the model returns a dict with keys {keys}: declare which is the embedding "
                                 f"(--output KEY, e.g. --output {keys[0]})", "output")
            if self.output not in out:
                raise InputError(f"output {self.output!r} is not among the model's outputs {keys}", "output")
            return out[self.output]
        if isinstance(out, (tuple, list)):
            if self.output is None:
                kinds = ", ".join(f"{i}: {_describe(o)}" for i, o in enumerate(out))
                raise InputError(f"the model returns {len(out)} outputs ({kinds}): declare which is the embedding "
                                 "(--output INDEX)", "output")
            if not isinstance(self.output, int) or not -len(out) <= self.output < len(out):
                raise InputError(f"output {self.output!r} is not an index of the model's {len(out)} outputs",
                                 "output")
            return out[self.output]
        raise InputError(f"the model returns {type(out).__name__}, not a tensor of embeddings", "output")

    def embed(self, out: torch.Tensor) -> torch.Tensor:
        """float32 embeddings ready to compare (normalised when :attr:`l2`)."""
        out = out.float()
        return torch.nn.functional.normalize(out, dim=-1) if self.l2 else out

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """s(a, b) over the last dimension, broadcasting the others."""
        if self.similarity == "euclidean":
            return -torch.linalg.vector_norm(a - b, dim=-1)
        return (a * b).sum(-1)

    def against(self, a, b):
        """Similarities of each row of ``a`` (..., D) to the one embedding ``b`` (D,); tensors or numpy
        arrays (a linear similarity is the same ``a @ b`` as ever, to the bit)."""
        if self.similarity == "euclidean" and isinstance(a, np.ndarray):
            return -np.linalg.norm(a - b, axis=-1)
        return self.score(a, b) if self.similarity == "euclidean" else a @ b

    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n, m) similarities of (n, D) ``a`` and (m, D) ``b``."""
        if self.similarity == "euclidean":
            return -torch.cdist(a[None], b[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
        return a @ b.T

    def targets(self, references: torch.Tensor) -> torch.Tensor:
        """What :meth:`mean_scores` takes for (B, T, D) ``references``: for a linear similarity their
        mean (B, D), since mean_j s(e, r_j) = s(e, mean_j r_j); for a distance all of them."""
        return references.mean(1) if self.linear else references

    def mean_scores(self, e: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(c, B): for each b, the mean over its targets of s(e[b, i], target): ``e`` (B, c, D),
        ``targets`` (B, D) (one each) or (B, T, D) (a distance's T targets, :meth:`targets`)."""
        if targets.dim() == 2:
            if self.linear:
                return torch.einsum("bcd,bd->cb", e, targets)
            targets = targets[:, None]
        elif self.linear:
            raise ValueError("a linear similarity takes (B, D) targets: reduce them with EmbeddingSpec.targets")
        dist = torch.cdist(e, targets, compute_mode="donot_use_mm_for_euclid_dist")  # (B, c, T)
        return -dist.mean(-1).T

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "similarity": self.similarity, "normalize": self.normalize}


def _describe(out: Any) -> str:
    return f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__


COSINE = EmbeddingSpec()


def embedding_spec(model: torch.nn.Module) -> EmbeddingSpec:
    """A model's declared embedding semantics (cosine for an undeclared one)."""
    return getattr(model, "embedding_spec", None) or COSINE


@dataclass(frozen=True)
class ModelSpec:
    """Everything declared about a similarity model: preprocessing, embedding, and for a factory
    model how to build it (``factory`` "package.module:callable" and its keyword arguments)."""

    preprocess: Preprocess = field(default_factory=Preprocess)
    embedding: EmbeddingSpec = COSINE
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, "preprocess": self.preprocess.to_dict(), "embedding": self.embedding.to_dict(),
                "factory": self.factory, "factory_kwargs": dict(self.factory_kwargs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            raise InputError(f"not a sane model spec (format {SPEC_FORMAT} expected): {str(data)[:80]}", "model")
        emb = data.get("embedding") or {}
        return cls(Preprocess.from_dict(data["preprocess"]),
                   EmbeddingSpec(emb.get("output"), emb.get("similarity", "cosine"), emb.get("normalize")),
                   data.get("factory"), dict(data.get("factory_kwargs") or {}))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelSpec:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read the model spec {path}: {exc}", "model") from exc
        return cls.from_dict(data)

    def describe(self) -> list[str]:
        """Human-readable lines (``sane model inspect``)."""
        p, e = self.preprocess, self.embedding
        resize = (f"squash to {p.size}x{p.size}" if p.resize == "squash"
                  else f"shorter side to {p.resize_size or p.size}, centre crop {p.size}x{p.size}")
        lines = [f"input size     {p.size} x {p.size} px", f"resize         {resize} ({p.interpolation})",
                 f"mean           {', '.join(f'{v:g}' for v in p.mean)}",
                 f"std            {', '.join(f'{v:g}' for v in p.std)}",
                 f"embedding      {'the output' if e.output is None else f'output {e.output!r}'}"
                 f"{', L2-normalised' if e.l2 else ''}",
                 f"similarity     {e.similarity}{' (negative distance)' if e.similarity == 'euclidean' else ''}"]
        if self.factory:
            lines.append(f"factory        {self.factory}({', '.join(f'{k}={v!r}' for k, v in self.factory_kwargs.items())})")
        return lines


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """Where a user model's metadata file lives: ``dir/name.ext`` -> ``dir/name.sane.json``."""
    path = Path(model_path)
    return path.with_name(path.stem + SPEC_SUFFIX) if path.suffix else path.with_name(path.name + SPEC_SUFFIX)


def parse_triple(text: str | tuple | list, name: str) -> tuple[float, float, float]:
    """``"0.5,0.5,0.5"`` (or a sequence) -> three floats; a clear error naming ``name`` otherwise."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in parts)
    except (TypeError, ValueError) as exc:
        raise InputError(f"--{name} expects three comma-separated numbers (R,G,B), got {text!r}", name) from exc
    if len(values) != 3:
        raise InputError(f"--{name} expects three comma-separated numbers (R,G,B), got {len(values)}: {text!r}", name)
    return values


def declare(
    base: ModelSpec,
    *,
    preset: str | None = None,
    input_size: int | None = None,
    mean: str | tuple | None = None,
    std: str | tuple | None = None,
    resize: str | None = None,
    interpolation: str | None = None,
    resize_size: int | None = None,
    output: str | int | None = None,
    similarity: str | None = None,
    normalize: bool | None = None,
) -> ModelSpec:
    """``base`` with the given declarations on top: a preset first, then each explicit value.

    Changing the input size of a crop preset keeps its ratio of resize to crop (256/224) unless
    ``resize_size`` is given.
    """
    pre = base.preprocess
    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown preprocessing preset {preset!r}; choose one of {', '.join(PRESETS)}",
                             "preprocess")
        pre = PRESETS[preset]
    changes: dict[str, Any] = {}
    if input_size is not None:
        changes["size"] = int(input_size)
        if pre.resize_size is not None and resize_size is None:
            changes["resize_size"] = max(int(input_size), round(pre.resize_size * int(input_size) / pre.size))
    if mean is not None:
        changes["mean"] = parse_triple(mean, "mean")
    if std is not None:
        changes["std"] = parse_triple(std, "std")
    if resize is not None:
        changes["resize"] = resize
        if resize == "squash":
            changes["resize_size"] = None
    if interpolation is not None:
        changes["interpolation"] = interpolation
    if resize_size is not None:
        changes["resize_size"] = int(resize_size)
    if changes:
        pre = replace(pre, **changes)
    emb = base.embedding
    if output is not None or similarity is not None or normalize is not None:
        sim = similarity or emb.similarity
        norm = normalize if normalize is not None else (emb.normalize if similarity in (None, emb.similarity) else None)
        emb = EmbeddingSpec(output if output is not None else emb.output, sim, norm)
    return replace(base, preprocess=pre, embedding=emb)
