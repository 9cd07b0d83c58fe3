"""Explaining a batch of pairs as ONE stream of masked images through the backbone.

A TorchServe batch holds B requests with the same options but (usually) different queries. Explained
one by one, each request streams its N masked queries in its own forward batches. Here every forward
batch holds the masks ``i..i+c`` applied to all U distinct queries of the batch (U x c images, c =
batch_size // U), each masked query is scored against its own request's reference embedding, and
each request's map is accumulated with the engine's own rule (``_score``, ``_weight``, ``_accumulate``
of :class:`~sane.saliency.engine.PerturbationExplainer`). Requests that share a query share its
stream (the K-reference path: one pass over the masks serves all their references).

The result equals :meth:`PerturbationExplainer.explain` request by request (up to float rounding);
generators that do not use the shared engine are explained one request at a time.
"""

from __future__ import annotations

import time

import torch

from sane.errors import InputError
from sane.saliency.engine import MODES, PerturbationExplainer, check_pair
from sane.saliency.result import SaliencyResult
from sane.substrate import make_substrate


def streams_batches(explainer) -> bool:
    """Whether ``explainer`` computes its maps with the unmodified shared engine (then it can be batched)."""
    cls = type(explainer)
    return (
        isinstance(explainer, PerturbationExplainer)
        and cls.explain is PerturbationExplainer.explain
        and cls._stream is PerturbationExplainer._stream
    )


def _unique(images: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Distinct images (by value) and, for each input, the index of its distinct image."""
    seen: dict[tuple, int] = {}
    unique: list[torch.Tensor] = []
    index = []
    for image in images:
        key = (tuple(image.shape), image.detach().cpu().contiguous().numpy().tobytes())
        if key not in seen:
            seen[key] = len(unique)
            unique.append(image)
        index.append(seen[key])
    return unique, torch.tensor(index, dtype=torch.long)


def stream_masked(
    explainer: PerturbationExplainer,
    images: torch.Tensor,
    masks: torch.Tensor,
    owner: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    keep_embeddings: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Embed every image of ``images`` (U, 3, H, W) under every mask (N, H, W) in shared forward batches.

    With ``targets`` (B, D) and ``owner`` (B,) (request b explains image ``owner[b]`` against
    ``targets[b]``) returns the (B, H*W) maps; with ``keep_embeddings`` also the (U, N, D) embeddings.
    """
    dev = explainer.device
    u = len(images)
    n, h, w = masks.shape
    per_step = max(1, explainer.embedder.batch_size // u)  # masks per forward batch
    images = images.to(dev)
    subs = torch.stack([make_substrate(img, explainer.substrate).expand_as(img) for img in images])
    delta = images - subs
    num = cov = None
    if targets is not None:
        owner = owner.to(dev)
        targets = targets.to(dev)
        num = torch.zeros((len(targets), h * w), device=dev)
        cov = torch.zeros(h * w, device=dev)
    kept = []
    for start in range(0, n, per_step):
        m = masks[start : start + per_step]
        c = len(m)
        x = torch.addcmul(subs[:, None], delta[:, None], m[None, :, None])  # (U, c, 3, H, W)
        e = explainer.embedder._forward(x.reshape(u * c, *images.shape[1:]))
        e = e.reshape(u, c, -1)
        if keep_embeddings:
            kept.append(e)
        if targets is not None:
            scores = torch.einsum("bcd,bd->cb", e[owner], targets)  # (c, B): each request's own target
            explainer._accumulate(num, cov, explainer._score(scores), m)
    maps = num / cov.clamp_min(1e-6) if num is not None else None
    return maps, (torch.cat(kept, 1) if keep_embeddings else None)


def _maps_from_embeddings(
    explainer: PerturbationExplainer,
    embeddings: torch.Tensor,
    owner: torch.Tensor,
    targets: torch.Tensor,
    masks: torch.Tensor,
) -> torch.Tensor:
    """(B, H*W) maps from masked embeddings (U, M, D): request b scores ``embeddings[owner[b]]`` against ``targets[b]``."""
    hw = masks.shape[-2] * masks.shape[-1]
    num = torch.zeros((len(targets), hw), device=explainer.device)
    cov = torch.zeros(hw, device=explainer.device)
    scores = torch.einsum("bmd,bd->mb", embeddings[owner.to(embeddings.device)], targets)
    explainer._accumulate(num, cov, explainer._score(scores), masks)
    return num / cov.clamp_min(1e-6)


def explain_pairs(
    explainer, queries: list[torch.Tensor], references: list[torch.Tensor], mode: str = "fixed"
) -> list[SaliencyResult]:
    """Explain B (query, reference) pairs with one explainer; one shared stream when the engine allows.

    Every query and reference is a (3, H, W) tensor of one size. Returns one :class:`SaliencyResult`
    per pair, as ``explainer.explain(query, reference, mode)`` would.
    """
    if len(queries) != len(references):
        raise InputError(f"{len(queries)} queries but {len(references)} references", "reference")
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}", "mode")
    sizes = {tuple(t.shape) for t in (*queries, *references)}
    if not streams_batches(explainer) or len(sizes) != 1 or len(queries) == 1:
        return [explainer.explain(q, r, mode=mode) for q, r in zip(queries, references)]
    for q, r in zip(queries, references):
        check_pair(q, r)
    t_start = time.perf_counter()
    dev = explainer.device
    uq, q_owner = _unique(queries)
    ur, r_owner = _unique(references)
    h, w = queries[0].shape[-2:]
    emb = explainer.embedder(torch.stack([*uq, *ur]).to(dev))  # one forward batch for all unmodified images
    q_emb, r_emb = emb[: len(uq)][q_owner.to(dev)], emb[len(uq) :][r_owner.to(dev)]  # (B, D) per request
    similarity = (q_emb * r_emb).sum(1)
    qmasks = explainer.query_masks((h, w))
    t_masks = time.perf_counter()
    ref_maps = None
    if mode == "fixed":
        qmaps, _ = stream_masked(explainer, torch.stack(uq), qmasks, q_owner, r_emb)
    else:
        rmasks = explainer.reference_masks((h, w))
        _, ref_embs = stream_masked(explainer, torch.stack(ur), rmasks, keep_embeddings=True)  # (Ur, R, D)
        # As the engine: mean_j s(q_i, r_j) = q_i . mean_j r_j, one target per request.
        targets = ref_embs.mean(1)[r_owner.to(dev)]
        qmaps, _ = stream_masked(explainer, torch.stack(uq), qmasks, q_owner, targets)
        ref_maps = _maps_from_embeddings(explainer, ref_embs, r_owner, q_emb, rmasks).reshape(-1, h, w).float().cpu()
    qmaps = qmaps.reshape(-1, h, w).float().cpu()
    total_ms = (time.perf_counter() - t_start) * 1e3
    timings = {"setup_ms": (t_masks - t_start) * 1e3, "total_ms": total_ms}
    return [
        SaliencyResult(
            query_map=qmaps[b],
            reference_map=ref_maps[b] if ref_maps is not None else None,
            similarity=float(similarity[b]),
            method=explainer.method,
            mode=mode,
            timings=dict(timings),
        )
        for b in range(len(queries))
    ]
