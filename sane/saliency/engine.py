"""The shared perturbation engine: stream masked images through the model, score them against the
reference embedding(s) and accumulate the map, O(batch) memory and one pass over the masks.

A generator supplies the masks ("keep" masks, 1 = pixel visible) and how scores are attributed:
``"kept"`` (RISE: map = sum_i s_i M_i / sum_i M_i, expected similarity when a pixel is visible) or
``"removed"`` (occlusion: map = sum_w (1 - s_w) W_w / sum_w W_w over the windows W = 1 - M).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from sane.errors import InputError
from sane.models.embedder import Embedder
from sane.saliency.result import SaliencyResult
from sane.substrate import make_substrate

MODES = ("fixed", "both")


def check_pair(query: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate a (3, H, W) query and a (3, H, W) or (K, 3, H, W) reference batch.

    Returns the query, the references as (K, 3, H, W), and whether a batch was given.
    """
    for name, t in (("query", query), ("reference", reference)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}", name)
        if not t.is_floating_point():
            raise InputError(f"{name} must be a float tensor (normalised image), got {t.dtype}", name)
    if query.dim() != 3 or query.shape[0] != 3:
        raise InputError(f"query must be (3, H, W), got shape {tuple(query.shape)}", "query")
    batched = reference.dim() == 4
    refs = reference if batched else reference[None]
    if refs.dim() != 4 or refs.shape[1] != 3 or refs.shape[0] < 1:
        raise InputError(
            f"reference must be (3, H, W) or (K, 3, H, W), got shape {tuple(reference.shape)}", "reference"
        )
    if refs.shape[-2:] != query.shape[-2:]:
        raise InputError(
            f"query is {tuple(query.shape[-2:])} but reference is {tuple(refs.shape[-2:])}: "
            "resize both to the model's input size",
            "reference",
        )
    return query, refs, batched


class PerturbationExplainer:
    """Base of mask-based generators; subclasses define the masks and the attribution rule."""

    method = "perturbation"
    attribution = "kept"  # or "removed"

    def __init__(
        self,
        model: nn.Module,
        batch_size: int = 256,
        seed: int = 0,
        substrate: str | float | torch.Tensor = "mean",
        amp: bool = False,
        channels_last: bool = False,
        device: str | torch.device | None = None,
        progress: bool = False,
    ):
        self.embedder = Embedder(model, batch_size, amp, channels_last, device)
        self.seed = int(seed)
        self.substrate = substrate
        self.progress = progress

    @property
    def model(self) -> nn.Module:
        return self.embedder.model

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    # -- what subclasses provide -------------------------------------------------------------
    def query_masks(self, size: tuple[int, int]) -> torch.Tensor:
        """(N, H, W) keep masks for the query."""
        raise NotImplementedError

    def reference_masks(self, size: tuple[int, int]) -> torch.Tensor:
        """(R, H, W) keep masks for the reference in mode='both'."""
        raise NotImplementedError

    # -- the engine ------------------------------------------------------------------------
    def _score(self, sims: torch.Tensor) -> torch.Tensor:
        return sims if self.attribution == "kept" else 1.0 - sims

    def _weight(self, masks: torch.Tensor) -> torch.Tensor:
        return masks if self.attribution == "kept" else 1.0 - masks

    def _accumulate(self, num: torch.Tensor, cov: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor) -> None:
        """num += scores^T . weights ((K x B) . (B x HW)), cov += sum of weights."""
        weights = self._weight(masks).reshape(len(masks), -1)
        num.addmm_(scores.T, weights)
        cov.add_(weights.sum(0))

    def _stream(
        self,
        image: torch.Tensor,
        substrate: torch.Tensor,
        masks: torch.Tensor,
        targets: torch.Tensor | None,
        condition=None,
        keep_embeddings: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Embed ``image`` under every mask, ``batch_size`` at a time.

        With ``targets`` (K, D) the map numerator/coverage is accumulated on the fly and the
        (K, H*W) map returned; the masked embeddings themselves are returned when ``keep_embeddings``.
        """
        bs = self.embedder.batch_size
        hw = masks.shape[-2] * masks.shape[-1]
        dev = self.device
        num = torch.zeros((len(targets), hw), device=dev) if targets is not None else None
        cov = torch.zeros(hw, device=dev)
        kept = []
        image = image.to(dev)
        substrate = substrate.to(dev)
        delta = image - substrate
        batches = range(0, len(masks), bs)
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=self.method, unit="batch", leave=False)
        # One reused buffer for the masked images: no fresh batch-sized allocation per step.
        buffer = torch.empty((min(bs, len(masks)), *image.shape), device=dev, dtype=image.dtype)
        for start in batches:
            m = masks[start : start + bs]
            x = torch.addcmul(substrate, delta, m[:, None], out=buffer[: len(m)])  # sub + (img - sub) * M
            e = self.embedder._forward(x, condition)
            if keep_embeddings:
                kept.append(e)
            if targets is not None:
                self._accumulate(num, cov, self._score(e @ targets.T), m)
        maps = num / cov.clamp_min(1e-6) if num is not None else None
        return maps, (torch.cat(kept) if keep_embeddings else None)

    def _map_from_embeddings(self, embeddings: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(H*W,) map from already-computed masked embeddings (M, D) scored against one target (D,)."""
        hw = masks.shape[-2] * masks.shape[-1]
        num = torch.zeros((1, hw), device=self.device)
        cov = torch.zeros(hw, device=self.device)
        self._accumulate(num, cov, self._score(embeddings @ target[:, None]), masks)
        return (num / cov.clamp_min(1e-6))[0]

    def explain(
        self, query: torch.Tensor, reference: torch.Tensor, mode: str = "fixed", condition=None
    ) -> SaliencyResult:
        """Saliency of ``query`` (and in mode='both' of ``reference``) for their similarity."""
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}", "mode")
        q, refs, batched = check_pair(query, reference)
        t_start = time.perf_counter()
        dev = self.device
        q, refs = q.to(dev), refs.to(dev)
        h, w = q.shape[-2:]
        q_emb = self.embedder(q[None], condition)[0]
        r_emb = self.embedder(refs, condition)
        similarity = r_emb @ q_emb
        qmasks = self.query_masks((h, w))
        t_masks = time.perf_counter()
        q_sub = make_substrate(q, self.substrate)
        ref_maps = None
        if mode == "fixed":
            qmaps, _ = self._stream(q, q_sub, qmasks, r_emb, condition)
        else:
            rmasks = self.reference_masks((h, w))
            ref_embs = torch.stack(
                [
                    self._stream(r, make_substrate(r, self.substrate), rmasks, None, condition, True)[1]
                    for r in refs
                ]
            )  # (K, R, D)
            # mean_j s(q_i, r_kj) = q_i . mean_j r_kj: one target per reference serves all N query masks.
            qmaps, _ = self._stream(q, q_sub, qmasks, ref_embs.mean(1), condition)
            # Reference maps score the masked references against the unmodified query. Averaging over
            # the masked queries instead favours half-masked references (s(q_i, r_j) peaks where r_j
            # is masked as much as q_i): on the tests' RegionModel it missed the region at 1000 masks.
            ref_maps = torch.stack([self._map_from_embeddings(e, q_emb, rmasks) for e in ref_embs])
            ref_maps = ref_maps.reshape(len(refs), h, w).float().cpu()
        qmaps = qmaps.reshape(len(refs), h, w).float().cpu()
        t_end = time.perf_counter()
        if not batched:
            qmaps = qmaps[0]
            ref_maps = ref_maps[0] if ref_maps is not None else None
        sim_out = similarity.cpu() if batched else float(similarity[0])
        return SaliencyResult(
            query_map=qmaps,
            reference_map=ref_maps,
            similarity=sim_out,
            method=self.method,
            mode=mode,
            timings={
                "setup_ms": (t_masks - t_start) * 1e3,
                "total_ms": (t_end - t_start) * 1e3,
            },
        )
