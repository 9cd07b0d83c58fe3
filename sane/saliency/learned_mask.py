"""Learned perturbation mask for similarity (SPEC §1.4; Fong & Vedaldi 2017, the deletion game).

A low-resolution mask m in [0, 1] (1 = keep) is learned with Adam so that the perturbed query
``q * m + background * (1 - m) + noise`` matches the reference as little as possible while deleting
as little as possible (L1) in smooth blobs (total variation). Saliency = 1 - m, upsampled.
The model's parameters are never updated: gradients are taken with respect to the mask only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sane.errors import InputError
from sane.saliency.engine import PerturbationGenerator
from sane.saliency.result import SaliencyResult
from sane.substrate import make_substrate

PERTURBATIONS = ("blur", "deletion", "noise")


def total_variation(masks: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-mask TV_beta of (B, 1, h, w) masks: mean |vertical diff|^beta + mean |horizontal diff|^beta."""
    rows = (masks[:, :, 1:, :] - masks[:, :, :-1, :]).abs().pow(beta).flatten(1).mean(1)
    cols = (masks[:, :, :, 1:] - masks[:, :, :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return rows + cols


class LearnedMask(PerturbationGenerator):
    """Learn a ``mask_size`` x ``mask_size`` deletion mask with Adam (``lr``, ``iterations``).

    Loss per pair: ``l1 * mean|1 - m| + tv * TV_beta(m) + s(q~, r)`` with
    ``q~ = q * M + background * (1 - M) + N(0, noise^2)`` (noise redrawn each step), M the bilinear
    upsampling of m, and m clamped to [0, 1] after each step. ``perturbation`` picks the background:
    "blur" (a Gaussian-blurred q, sigma ``blur_sigma`` or side/20), "deletion" (the ``substrate``,
    the mean colour by default) or "noise" (fresh N(0, 1) noise in normalised space each step).

    mode='both' learns one mask per image, jointly, on ``s(q~, r~)``. A (K, 3, H, W) reference batch
    is optimised as K independent problems, ``batch_size`` at a time.
    """

    method = "mask"
    size_option = "iterations"
    shares_stream = False  # each pair optimises its own mask
    needs_gradients = True
    BACKWARD_FACTOR = 3  # an iteration is a forward and a backward pass: ~3 forward passes

    def __init__(
        self,
        model: nn.Module,
        iterations: int = 500,
        lr: float = 0.1,
        mask_size: int = 14,
        seed: int = 0,
        batch_size: int = 16,
        perturbation: str = "blur",
        l1: float = 0.01,
        tv: float = 0.2,
        tv_beta: float = 3.0,
        noise: float = 0.2,
        blur_sigma: float | None = None,
        **kwargs,
    ):
        super().__init__(model, batch_size=batch_size, seed=seed, **kwargs)
        if self.embedder.quantize:
            raise InputError("the learned mask optimises through the model, and an int8 model has no gradients: "
                             "use amp instead of quantize", "quantize")
        for name, value in (("iterations", iterations), ("mask_size", mask_size)):
            if int(value) < 1:
                raise InputError(f"{name} must be >= 1, got {value}", name)
        if lr <= 0:
            raise InputError(f"lr must be > 0, got {lr}", "lr")
        if perturbation not in PERTURBATIONS:
            raise InputError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}", "perturbation")
        for name, value in (("l1", l1), ("tv", tv), ("noise", noise)):
            if value < 0:
                raise InputError(f"{name} must be >= 0, got {value}", name)
        self.iterations = int(iterations)
        self.lr = float(lr)
        self.mask_size = int(mask_size)
        self.perturbation = perturbation
        self.l1 = float(l1)
        self.tv = float(tv)
        self.tv_beta = float(tv_beta)
        self.noise = float(noise)
        self.blur_sigma = blur_sigma

    def background(self, image: torch.Tensor) -> torch.Tensor:
        """What a deleted pixel of ``image`` shows (for 'noise': the substrate the noise is added to)."""
        if self.perturbation == "blur":
            return make_substrate(image, "blur", blur_sigma=self.blur_sigma)
        return make_substrate(image, self.substrate).expand_as(image)

    @classmethod
    def cost(cls, mode: str, options: Mapping[str, Any] | None = None, references: int = 1) -> int:
        per_pair = cls.BACKWARD_FACTOR * int(cls.option(options or {}, "iterations")) * (2 if mode == "both" else 1)
        return per_pair * references  # one mask (pair) per reference

    def _explain(self, q: torch.Tensor, refs: torch.Tensor, mode: str, condition) -> SaliencyResult:
        dev = self.device
        q, refs = q.to(dev), refs.to(dev)
        q_emb = self.embedder(q[None], condition)[0]
        r_emb = self.embedder(refs, condition)
        similarity = self.embedder.embedding.against(r_emb, q_emb)
        gen = torch.Generator(device=dev).manual_seed(self.seed)
        q_maps, r_maps = [], []
        for start in range(0, len(refs), self.embedder.batch_size):
            chunk = slice(start, start + self.embedder.batch_size)
            qm, rm = self._optimise(q, refs[chunk], r_emb[chunk], mode, condition, gen)
            q_maps.append(qm)
            if rm is not None:
                r_maps.append(rm)
        qmaps = torch.cat(q_maps).float().cpu()
        rmaps = torch.cat(r_maps).float().cpu() if mode == "both" else None
        return SaliencyResult(qmaps, rmaps, similarity.cpu(), self.method, mode)

    def _perturb(self, images: torch.Tensor, backgrounds: torch.Tensor, up: torch.Tensor, gen) -> torch.Tensor:
        """(B, 3, H, W) perturbed images under upsampled keep masks ``up`` (B, 1, H, W); ``images`` and
        ``backgrounds`` are (3, H, W) or (B, 3, H, W)."""
        shape = (len(up), *images.shape[-3:])
        if self.perturbation == "noise":
            backgrounds = backgrounds + torch.randn(shape, generator=gen, device=up.device)
        x = images * up + backgrounds * (1 - up)
        if self.noise > 0:
            x = x + self.noise * torch.randn(shape, generator=gen, device=up.device)
        return x

    def _embed(self, x: torch.Tensor, condition) -> torch.Tensor:
        """Embeddings ready to compare, with gradients (the Embedder runs under inference mode)."""
        if self.embedder.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.embedder.amp_dtype, enabled=self.embedder.amp):
            out = self.model(x) if condition is None else self.model(x, condition)
        self.embedder.images_seen += len(x)
        return self.embedder.embedding.embed(out)

    def _optimise(self, q, refs, r_emb, mode, condition, gen) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Learn the masks of one chunk of B references; returns (B, H, W) saliency maps (and the references')."""
        b = len(refs)
        h, w = q.shape[-2:]
        both = mode == "both"
        n_masks = 2 * b if both else b  # query masks first, then reference masks
        steps = range(self.iterations)
        if self.progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=self.method, unit="step", leave=False)
        # Gradients are needed even when the caller runs under no_grad or inference_mode; inference
        # tensors cannot be saved for backward, hence the clones.
        with torch.inference_mode(False), torch.enable_grad():
            q, refs, r_emb = q.clone(), refs.clone(), r_emb.clone()
            q_bg = self.background(q)
            r_bg = torch.stack([self.background(r) for r in refs]) if both else None
            masks = torch.ones((n_masks, 1, self.mask_size, self.mask_size), device=self.device, requires_grad=True)
            opt = torch.optim.Adam([masks], lr=self.lr)
            for _ in steps:
                up = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)
                if both:
                    xq = self._perturb(q, q_bg, up[:b], gen)
                    xr = self._perturb(refs, r_bg, up[b:], gen)
                    e = self._embed(torch.cat([xq, xr]), condition)
                    sims = self.embedder.embedding.score(e[:b], e[b:])
                else:
                    e = self._embed(self._perturb(q, q_bg, up, gen), condition)
                    sims = self.embedder.embedding.score(e, r_emb)
                reg = self.l1 * (1 - masks).abs().flatten(1).mean(1) + self.tv * total_variation(masks, self.tv_beta)
                if both:
                    reg = reg[:b] + reg[b:]
                loss = (reg + sims).sum()  # a sum of independent per-pair losses: Adam is elementwise
                (grad,) = torch.autograd.grad(loss, [masks])
                masks.grad = grad
                opt.step()
                with torch.no_grad():
                    masks.clamp_(0.0, 1.0)
        with torch.no_grad():
            saliency = 1.0 - F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return (saliency[:b], saliency[b:]) if both else (saliency, None)
