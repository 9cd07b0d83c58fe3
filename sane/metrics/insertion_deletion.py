"""Insertion / deletion curves and AUCs for similarity saliency maps (SPEC §2).

A map is good when revealing its top pixels on a substrate quickly restores the similarity to the
reference (insertion, higher AUC is better) and hiding them quickly destroys it (deletion, lower is
better). Everything here is a causal test of the map against the model itself, no labels needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from sane.errors import InputError
from sane.images import Preprocess
from sane.models.embedder import Embedder
from sane.substrate import gaussian_blur, make_substrate

__all__ = [
    "Curves",
    "auc",
    "gaussian_blur",
    "insertion_deletion",
    "insertion_deletion_curves",
    "normalise_curve",
    "step_masks",
]


@dataclass(frozen=True)
class Curves:
    """Raw cosine similarity to the reference at each fraction ``t`` of the query's top pixels."""

    t: torch.Tensor  # (steps,) fractions of pixels kept, 0..1
    insertion: torch.Tensor  # (steps,) s(substrate + top pixels of q, r)
    deletion: torch.Tensor  # (steps,) s(q with top pixels removed, r)


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Accept a tensor or an array, so numpy maps from other tools work too."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise InputError(f"{name}: expected a tensor or array, got {type(x).__name__}", name)


def step_masks(saliency: torch.Tensor, steps: int = 101) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, keep): ``keep[k]`` (H, W) bool marks the top ``max(round(t_k*HW), 1)`` pixels by saliency.

    Ties are broken in raster order (stable sort), so the masks are deterministic for any map.
    """
    h, w = saliency.shape
    n = h * w
    order = torch.argsort(-saliency.reshape(-1).float(), stable=True)
    rank = torch.empty(n, dtype=torch.long, device=saliency.device)
    rank[order] = torch.arange(n, device=saliency.device)
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    counts = torch.round(t * n).long().clamp(min=1).to(saliency.device)
    keep = rank.unsqueeze(0) < counts.unsqueeze(1)
    return t.float(), keep.view(steps, h, w)


def _validate(query: torch.Tensor, reference: torch.Tensor, saliency: torch.Tensor) -> None:
    """Raise InputError unless query/reference are (C, H, W) alike and saliency is a finite (H, W)."""
    if query.dim() != 3:
        raise InputError(f"query: expected a (C, H, W) tensor, got shape {tuple(query.shape)}", "query")
    if reference.shape != query.shape:
        raise InputError(
            f"reference: shape {tuple(reference.shape)} does not match the query's {tuple(query.shape)}",
            "reference",
        )
    if saliency.shape != query.shape[1:]:
        raise InputError(
            f"saliency: shape {tuple(saliency.shape)} does not match the query's "
            f"(H, W) = {tuple(query.shape[1:])}",
            "saliency",
        )
    if not torch.isfinite(saliency).all():
        raise InputError("saliency: map contains NaN or infinite values", "saliency")


def insertion_deletion_curves(
    model: torch.nn.Module,
    query: torch.Tensor,
    reference: torch.Tensor,
    saliency: torch.Tensor | np.ndarray,
    substrate: str | torch.Tensor = "constant",
    steps: int = 101,
    batch_size: int = 202,
    grey: float = 127 / 255,
    preprocess: Preprocess | None = None,
    blur_sigma: float | None = None,
) -> Curves:
    """Insertion and deletion curves of one (query, reference) pair for the query's saliency map.

    The ``2*steps`` step images (insertion first, then deletion) go through the model in chunks of
    ``batch_size``, each chunk built on the fly from one boolean mask stack, so memory is
    O(batch_size) images; the reference is embedded once. Curves are raw cosine similarities (CPU).
    """
    query = _as_tensor(query, "query")
    reference = _as_tensor(reference, "reference")
    saliency = _as_tensor(saliency, "saliency")
    _validate(query, reference, saliency)
    if steps < 2:
        raise InputError(f"steps: need at least 2, got {steps}", "steps")
    if batch_size < 1:
        raise InputError(f"batch_size: need at least 1, got {batch_size}", "batch_size")

    embed = Embedder(model, batch_size)
    device = embed.device
    query = query.to(device=device, dtype=torch.float32)
    reference = reference.to(device=device, dtype=torch.float32)
    saliency = saliency.to(device=device)

    with torch.inference_mode():
        sub = make_substrate(query, substrate, preprocess, grey, blur_sigma)
        t, keep = step_masks(saliency, steps)
        # show_query[i]: which pixels of step image i come from the query (rest: substrate).
        show_query = torch.cat([keep, ~keep]).unsqueeze(1)  # (2*steps, 1, H, W)
        ref = embed(reference.unsqueeze(0))[0]
        sims = []
        for a in range(0, 2 * steps, batch_size):
            sims.append(embed.embedding.against(embed(torch.where(show_query[a : a + batch_size], query, sub)), ref))
        sim = torch.cat(sims).float().cpu()
    sim = sim.clone()  # a normal tensor, usable outside inference mode
    return Curves(t=t.clone(), insertion=sim[:steps], deletion=sim[steps:])


def normalise_curve(curve: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Min-max scale a curve (along its last axis) to [0, 1]; a flat curve becomes zeros.

    Per-pair normalisation makes pairs with different similarity ranges count equally in the mean.
    """
    c = _as_tensor(curve, "curve").float()
    lo = c.amin(dim=-1, keepdim=True)
    span = c.amax(dim=-1, keepdim=True) - lo
    out = (c - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, out, torch.zeros_like(out))


def auc(curve: torch.Tensor | np.ndarray, t: torch.Tensor | np.ndarray | None = None) -> float:
    """Area under a 1-D curve by the trapezoid rule over ``t`` (default: linspace 0..1), times 100."""
    c = _as_tensor(curve, "curve").double()
    if c.dim() != 1 or c.numel() < 2:
        raise InputError(f"curve: expected a 1-D curve of >= 2 points, got shape {tuple(c.shape)}", "curve")
    x = torch.linspace(0.0, 1.0, c.numel(), dtype=torch.float64) if t is None else _as_tensor(t, "t")
    if x.shape != c.shape:
        raise InputError(f"t: shape {tuple(x.shape)} does not match the curve's {tuple(c.shape)}", "t")
    return float(torch.trapezoid(c, x.double().to(c.device)) * 100)


def insertion_deletion(
    model: torch.nn.Module,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    maps: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    substrate: str | torch.Tensor = "constant",
    steps: int = 101,
    batch_size: int = 202,
    grey: float = 127 / 255,
    preprocess: Preprocess | None = None,
    blur_sigma: float | None = None,
    progress: bool = False,
) -> dict:
    """Mean normalised insertion/deletion curves over many pairs, and their AUCs x100 (SPEC §2).

    Returns ``{"insertion", "deletion"}`` (floats; insertion higher and deletion lower is better)
    and ``{"insertion_curve", "deletion_curve", "t"}`` ((steps,) tensors).
    """
    if len(pairs) != len(maps):
        raise InputError(f"maps: got {len(maps)} maps for {len(pairs)} pairs", "maps")
    if len(pairs) == 0:
        raise InputError("pairs: need at least one (query, reference) pair", "pairs")
    ins_sum = torch.zeros(steps)
    del_sum = torch.zeros(steps)
    t = torch.linspace(0.0, 1.0, steps)
    for i, ((query, reference), saliency) in enumerate(
        tqdm(zip(pairs, maps), total=len(pairs), desc="insertion/deletion", disable=not progress)
    ):
        try:
            curves = insertion_deletion_curves(
                model,
                query,
                reference,
                saliency,
                substrate=substrate,
                steps=steps,
                batch_size=batch_size,
                grey=grey,
                preprocess=preprocess,
                blur_sigma=blur_sigma,
            )
        except InputError as exc:
            raise InputError(f"pair {i}: {exc}", exc.field) from exc
        ins_sum += normalise_curve(curves.insertion)
        del_sum += normalise_curve(curves.deletion)
        t = curves.t
    ins_curve = ins_sum / len(pairs)
    del_curve = del_sum / len(pairs)
    return {
        "insertion": auc(ins_curve, t),
        "deletion": auc(del_curve, t),
        "insertion_curve": ins_curve,
        "deletion_curve": del_curve,
        "t": t,
    }
