"""LIME for similarity (SPEC §1.3): a sparse linear model of s(q_sample, r) over q's superpixels.

Superpixels come from scikit-image (quickshift with its defaults, as the released code; SLIC as an
option), the weighted Lasso from scikit-learn. Perturbed queries are built per batch from the
on/off vectors (O(batch) memory) and scored against any number of references at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from sane.errors import InputError
from sane.images import IMAGENET_MEAN, IMAGENET_STD
from sane.saliency.engine import PerturbationGenerator
from sane.saliency.result import SaliencyResult
from sane.substrate import make_substrate

SEGMENTATIONS = ("quickshift", "slic")


@dataclass
class LimeResult(SaliencyResult):
    """A :class:`SaliencyResult` plus what LIME fitted.

    ``segments`` (H, W) superpixel ids 0..S-1; ``coefficients`` (S,) or (K, S) Lasso weights (the
    map is ``coefficients[segments]``); ``intercept`` float or (K,); ``selected`` the ids of the
    top-k regions (a list per reference for a batch) when ``top_k`` is set, else None.
    """

    segments: torch.Tensor | None = None
    coefficients: torch.Tensor | None = None
    intercept: float | torch.Tensor | None = None
    selected: list | None = None

    def select(self, k: int) -> LimeResult:
        return replace(
            super().select(k),
            coefficients=self.coefficients[k],
            intercept=float(self.intercept[k]),
            selected=self.selected[k] if self.selected is not None else None,
        )


def to_rgb(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Normalised (3, H, W) tensor -> (H, W, 3) float64 RGB array in [0, 1] (what scikit-image takes)."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * s + m).clamp(0, 1)
    return rgb.permute(1, 2, 0).double().numpy()


def superpixels(
    image: torch.Tensor,
    method: str | Callable[[np.ndarray], np.ndarray] = "quickshift",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    **options,
) -> torch.Tensor:
    """(H, W) long superpixel ids 0..S-1 of a normalised (3, H, W) image.

    ``method``: "quickshift" (scikit-image defaults unless ``options``), "slic" (``n_segments=100``,
    ``start_label=0`` unless given) or a callable mapping an (H, W, 3) RGB [0, 1] array to labels.
    Ids are made consecutive, so S is the number of distinct labels.
    """
    rgb = to_rgb(image, mean, std)
    if callable(method):
        labels = np.asarray(method(rgb))
    elif method == "quickshift":
        from skimage.segmentation import quickshift

        labels = quickshift(rgb, **options)
    elif method == "slic":
        from skimage.segmentation import slic

        labels = slic(rgb, **{"n_segments": 100, "start_label": 0, **options})
    else:
        raise InputError(f"segmentation must be one of {SEGMENTATIONS} or a callable, got {method!r}", "segmentation")
    if labels.shape != rgb.shape[:2]:
        raise InputError(f"segmentation returned shape {labels.shape}, expected {rgb.shape[:2]}", "segmentation")
    _, ids = np.unique(labels, return_inverse=True)
    return torch.from_numpy(ids.reshape(labels.shape).astype(np.int64))


def kernel_weights(samples: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """LIME's sample weights: ``sqrt(exp(-d^2 / width^2))`` of the cosine distance ``d`` between each
    on/off vector and the all-on vector (an all-off vector has distance 1)."""
    on = samples.sum(1)
    cos = on / (on.sqrt() * samples.shape[1] ** 0.5).clamp_min(1e-12)
    d = 1.0 - cos
    return torch.exp(-(d**2) / (2 * kernel_width**2))


class LIME(PerturbationGenerator):
    """LIME over the query's superpixels with a fixed reference (the paper has no both-images LIME).

    ``n_samples`` on/off vectors, each superpixel hidden (replaced by the substrate) with probability
    ``p_hide``; the first sample is the unmodified query, as in LIME. A Lasso (``alpha``) weighted by
    LIME's exponential kernel (``kernel_width`` 0.25 on the cosine distance) maps on/off vectors to
    similarities; each pixel gets its superpixel's coefficient. ``top_k`` keeps only the k regions
    with the largest positive coefficients (the rest of the map is 0). A (K, 3, H, W) reference batch
    costs the same N forward passes: one multi-output Lasso fit serves all K.
    """

    method = "lime"
    modes = ("fixed",)  # the paper has no both-images LIME
    size_option = "n_samples"
    shares_stream = False  # each query has its own superpixels and Lasso fit

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 1000,
        batch_size: int = 256,
        seed: int = 0,
        p_hide: float = 0.5,
        kernel_width: float = 0.25,
        alpha: float = 1e-3,
        segmentation: str | Callable[[np.ndarray], np.ndarray] = "quickshift",
        segmentation_options: dict | None = None,
        top_k: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        **kwargs,
    ):
        super().__init__(model, batch_size=batch_size, seed=seed, **kwargs)
        if int(n_samples) < 2:
            raise InputError(f"n_samples must be >= 2, got {n_samples}", "n_samples")
        if not 0.0 < p_hide < 1.0:
            raise InputError(f"p_hide must be in (0, 1), got {p_hide}", "p_hide")
        if kernel_width <= 0:
            raise InputError(f"kernel_width must be > 0, got {kernel_width}", "kernel_width")
        if alpha < 0:
            raise InputError(f"alpha must be >= 0, got {alpha}", "alpha")
        if top_k is not None and int(top_k) < 1:
            raise InputError(f"top_k must be >= 1 or None, got {top_k}", "top_k")
        if not callable(segmentation) and segmentation not in SEGMENTATIONS:
            raise InputError(
                f"segmentation must be one of {SEGMENTATIONS} or a callable, got {segmentation!r}", "segmentation"
            )
        self.n_samples = int(n_samples)
        self.p_hide = float(p_hide)
        self.kernel_width = float(kernel_width)
        self.alpha = float(alpha)
        self.segmentation = segmentation
        self.segmentation_options = dict(segmentation_options or {})
        self.top_k = None if top_k is None else int(top_k)
        self.mean, self.std = mean, std

    def segment(self, query: torch.Tensor) -> torch.Tensor:
        """(H, W) superpixel ids of the query with this generator's segmentation."""
        return superpixels(query, self.segmentation, self.mean, self.std, **self.segmentation_options)

    def samples(self, n_segments: int) -> torch.Tensor:
        """(n_samples, S) float on/off vectors (1 = superpixel visible), seeded; row 0 is all on."""
        gen = torch.Generator().manual_seed(self.seed)
        z = (torch.rand((self.n_samples, n_segments), generator=gen) >= self.p_hide).float()
        z[0] = 1.0
        return z

    @classmethod
    def cost(cls, mode: str, options: Mapping[str, Any] | None = None, references: int = 1) -> int:
        return int(cls.option(options or {}, "n_samples"))  # one multi-output fit serves every reference

    def explain(self, query: torch.Tensor, reference: torch.Tensor, mode: str = "fixed", condition=None,
                segments: torch.Tensor | None = None) -> LimeResult:
        """LIME map of ``query`` for its similarity to ``reference`` (mode='fixed' only).

        ``segments`` (H, W) integer ids override the segmentation (e.g. to share superpixels).
        """
        return super().explain(query, reference, mode, condition, segments=segments)

    def _explain(self, q: torch.Tensor, refs: torch.Tensor, mode: str, condition,
                 segments: torch.Tensor | None = None) -> LimeResult:
        t_start = time.perf_counter()
        dev = self.device
        h, w = q.shape[-2:]
        if segments is None:
            segments = self.segment(q)
        else:
            segments = torch.as_tensor(segments)
            if segments.shape != (h, w) or segments.is_floating_point():
                raise InputError(f"segments must be an integer ({h}, {w}) tensor, got {tuple(segments.shape)}",
                                 "segments")
            _, inv = torch.unique(segments.cpu(), return_inverse=True)
            segments = inv.long()
        n_seg = int(segments.max()) + 1
        t_seg = time.perf_counter()

        q, refs = q.to(dev), refs.to(dev)
        self._calibrate(torch.cat([q[None], refs]), condition)
        q_emb = self.embedder(q[None], condition)[0]
        r_emb = self.embedder(refs, condition)  # (K, D)
        similarity = self.embedder.embedding.against(r_emb, q_emb)
        z = self.samples(n_seg)
        sims = self._score_samples(q, z, segments.to(dev), r_emb, condition)  # (N, K)
        t_fwd = time.perf_counter()

        coef, intercept = self._fit(z, sims)  # (K, S), (K,)
        selected = None
        if self.top_k is not None:
            selected, keep = [], torch.zeros_like(coef, dtype=torch.bool)
            for k in range(len(coef)):
                order = torch.argsort(-coef[k], stable=True)[: self.top_k]
                ids = order[coef[k, order] > 0]
                keep[k, ids] = True
                selected.append(ids.tolist())
            coef_map = torch.where(keep, coef, torch.zeros_like(coef))
        else:
            coef_map = coef
        maps = coef_map[:, segments]  # (K, H, W)
        t_end = time.perf_counter()
        return LimeResult(
            query_map=maps,
            reference_map=None,
            similarity=similarity.cpu(),
            method=self.method,
            mode=mode,
            timings={
                "segmentation_ms": (t_seg - t_start) * 1e3,
                "forward_ms": (t_fwd - t_seg) * 1e3,
                "fit_ms": (t_end - t_fwd) * 1e3,
                "total_ms": (t_end - t_start) * 1e3,
            },
            segments=segments,
            coefficients=coef,
            intercept=intercept,
            selected=selected,
        )

    def _score_samples(
        self, q: torch.Tensor, z: torch.Tensor, segments: torch.Tensor, r_emb: torch.Tensor, condition
    ) -> torch.Tensor:
        """(N, K) similarities of the perturbed queries, built and embedded ``batch_size`` at a time."""
        bs = self.embedder.batch_size
        sub = make_substrate(q, self.substrate)
        delta = q - sub
        z_dev = z.to(self.device)
        out = []
        batches = range(0, len(z), bs)
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=self.method, unit="batch", leave=False)
        buffer = torch.empty((min(bs, len(z)), *q.shape), device=self.device, dtype=q.dtype)
        for start in batches:
            keep = z_dev[start : start + bs][:, segments]  # (B, H, W): each pixel takes its superpixel's bit
            x = torch.addcmul(sub, delta, keep[:, None], out=buffer[: len(keep)])
            out.append(self.embedder.embedding.matrix(self.embedder._forward(x, condition), r_emb))
        return torch.cat(out).float().cpu()

    def _fit(self, z: torch.Tensor, sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted Lasso from on/off vectors to similarities, one output per reference."""
        from sklearn.linear_model import Lasso

        weights = kernel_weights(z, self.kernel_width).double().numpy()
        x = z.double().numpy()
        y = sims.double().numpy()
        if self.alpha == 0:
            from sklearn.linear_model import LinearRegression

            model = LinearRegression().fit(x, y, sample_weight=weights)
        else:
            model = Lasso(alpha=self.alpha, max_iter=10_000).fit(x, y, sample_weight=weights)
        coef = torch.as_tensor(np.atleast_2d(model.coef_), dtype=torch.float32)  # (K, S)
        intercept = torch.as_tensor(np.atleast_1d(model.intercept_), dtype=torch.float32)
        return coef, intercept
