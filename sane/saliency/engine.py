"""The shared perturbation engine: stream masked images through the model, score them against the
reference embedding(s) and accumulate the map, O(batch) memory and one pass over the masks.

A generator on this engine overrides :meth:`~PerturbationGenerator.query_masks` (and
``reference_masks`` for mode 'both'); LIME and the learned mask reuse its substrate and int8
calibration but compute their maps in their own ``_explain`` hook (they do not share a stream).

A generator supplies the masks ("keep" masks, 1 = pixel visible) and how scores are attributed:
``"kept"`` (RISE: map = sum_i s_i M_i / sum_i M_i, expected similarity when a pixel is visible) or
``"removed"`` (occlusion: map = sum_w (1 - s_w) W_w / sum_w W_w over the windows W = 1 - M).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from sane.saliency.base import SaliencyGenerator
from sane.saliency.masks import rise_masks
from sane.saliency.result import SaliencyResult
from sane.substrate import make_substrate

CALIBRATION_MASKS = 16  # masked copies of each image an int8 generator calibrates on (``quantize``)
# images an int8 generator calibrates on at most (queries first): K references must not make the
# calibration K times dearer (with 10 distinct references the maps stay at Pearson >= 0.9999 to fp32)
CALIBRATION_MAX_IMAGES = 4
_CALIBRATION_SEED_OFFSET = 7_919  # calibration masks never coincide with a generator's own


def substrates(images: torch.Tensor, substrate: str | float | torch.Tensor = "mean") -> torch.Tensor:
    """(U, 3, H, W): what a hidden pixel of each of ``images`` shows (:func:`~sane.substrate.make_substrate`)."""
    return torch.stack([make_substrate(img, substrate).expand_as(img) for img in images])


def calibration_batch(images: torch.Tensor, substrate: str | float | torch.Tensor = "mean", seed: int = 0
                      ) -> torch.Tensor:
    """What an int8 model is calibrated on: ``images`` (U, 3, H, W) and ``CALIBRATION_MASKS`` copies of
    each under seeded RISE masks over the substrate, the kind of input every generator feeds (whatever
    its own masks). A worker quantizes once on its archive's images; a generator on its first pair."""
    masks = rise_masks(CALIBRATION_MASKS, 8, 0.5, tuple(images.shape[-2:]), seed + _CALIBRATION_SEED_OFFSET,
                       images.device)
    subs = substrates(images, substrate)
    masked = torch.addcmul(subs[:, None], (images - subs)[:, None], masks[None, :, None])
    return torch.cat([images, masked.reshape(-1, *images.shape[1:])])


class PerturbationGenerator(SaliencyGenerator):
    """Base of mask-based generators; subclasses define the masks and the attribution rule.

    ``substrate`` is what a hidden pixel shows ("mean" colour, "blur", a constant or an image).
    """

    method = "perturbation"
    attribution = "kept"  # or "removed"
    shares_stream = True

    def __init__(
        self,
        model: nn.Module,
        batch_size: int = 256,
        seed: int = 0,
        substrate: str | float | torch.Tensor = "mean",
        **kwargs,
    ):
        super().__init__(model, batch_size, seed, **kwargs)  # amp, channels_last, device, progress, ...
        self.substrate = substrate

    # -- what subclasses provide -------------------------------------------------------------
    def query_masks(self, size: tuple[int, int]) -> torch.Tensor:
        """(N, H, W) keep masks for the query."""
        raise NotImplementedError

    def reference_masks(self, size: tuple[int, int]) -> torch.Tensor:
        """(R, H, W) keep masks for the reference in mode='both'."""
        raise NotImplementedError

    # -- the engine ------------------------------------------------------------------------
    def _calibrate(self, images: torch.Tensor, condition=None) -> None:
        """With ``quantize``, before the first forward: calibrate the int8 model on :func:`calibration_batch`
        of the first :data:`CALIBRATION_MAX_IMAGES` of ``images`` (U, 3, H, W; queries first) over this
        generator's substrate. Once per generator."""
        if not self.embedder.quantize or self.embedder.calibrated:
            return
        images = images.to(self.device)
        masked = calibration_batch(images[:CALIBRATION_MAX_IMAGES], self.substrate, self.seed)
        self.embedder.calibrate(torch.cat([masked, images[CALIBRATION_MAX_IMAGES:]]), condition)

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
        images: torch.Tensor,
        masks: torch.Tensor,
        owner: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        condition=None,
        keep_embeddings: bool = False,
        sums: tuple[torch.Tensor, torch.Tensor] | None = None,
        scores_out: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Embed each of U ``images`` (U, 3, H, W) under every mask (N, H, W): one stream, every forward
        batch holding ``batch_size // U`` masks applied to all U images.

        With ``targets`` (B, D), or (B, T, D) for a distance, and ``owner`` (B,) — map b explains image
        ``owner[b]`` against ``targets[b]`` (the mean score over its T targets) — the (B, H*W) maps are accumulated
        on the fly; with ``keep_embeddings`` the (U, N, D) masked embeddings are returned too. ``sums``
        (numerator (B, H*W), coverage (H*W)) continues a map over earlier masks: they are added to in place;
        ``scores_out`` collects each forward batch's attributed scores (c, B).
        """
        dev = self.device
        u, n = len(images), len(masks)
        hw = masks.shape[-2] * masks.shape[-1]
        per_step = max(1, self.embedder.batch_size // u)  # masks per forward batch
        images = images.to(dev)
        subs = substrates(images, self.substrate)
        delta = images - subs
        num = cov = None
        if targets is not None:
            owner, targets = owner.to(dev), targets.to(dev)
            num, cov = sums if sums is not None else (torch.zeros((len(targets), hw), device=dev),
                                                      torch.zeros(hw, device=dev))
        kept = []
        steps = range(0, n, per_step)
        if self.progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=self.method, unit="batch", leave=False)
        # One reused buffer for the masked images: no fresh batch-sized allocation per step.
        buffer = torch.empty((u, min(per_step, n), *images.shape[1:]), device=dev, dtype=images.dtype)
        for start in steps:
            m = masks[start : start + per_step]
            c = len(m)
            x = torch.addcmul(subs[:, None], delta[:, None], m[None, :, None], out=buffer[:, :c])
            e = self.embedder._forward(x.reshape(u * c, *images.shape[1:]), condition).reshape(u, c, -1)
            if keep_embeddings:
                kept.append(e)
            if targets is not None:
                # (c, B): each map's own target(s)
                scores = self._score(self.embedder.embedding.mean_scores(e[owner], targets))
                self._accumulate(num, cov, scores, m)
                if scores_out is not None:
                    scores_out.append(scores)
        maps = num / cov.clamp_min(1e-6) if num is not None else None
        return maps, (torch.cat(kept, 1) if keep_embeddings else None)

    def _query_maps(
        self, queries: torch.Tensor, owner: torch.Tensor, targets: torch.Tensor, size: tuple[int, int], condition
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, H*W) query maps and how many query masks made each (B,): every mask of
        :meth:`query_masks` (an adaptive generator overrides this to stop each map early)."""
        masks = self.query_masks(size)
        maps, _ = self._stream(queries, masks, owner, targets, condition)
        return maps, torch.full((len(targets),), len(masks), dtype=torch.long)

    def _maps_from_embeddings(
        self, embeddings: torch.Tensor, owner: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """(B, H*W) maps from masked embeddings (U, M, D): map b scores ``embeddings[owner[b]]``
        against ``targets[b]``; no forward passes."""
        hw = masks.shape[-2] * masks.shape[-1]
        num = torch.zeros((len(targets), hw), device=self.device)
        cov = torch.zeros(hw, device=self.device)
        scores = self.embedder.embedding.mean_scores(embeddings[owner.to(embeddings.device)], targets)
        step = max(1, self.embedder.batch_size)  # masks are read a batch at a time (a stream may be lazy)
        for start in range(0, len(masks), step):
            self._accumulate(num, cov, self._score(scores[start : start + step]), masks[start : start + step])
        return num / cov.clamp_min(1e-6)

    def _explain_stream(
        self,
        queries: torch.Tensor,
        q_owner: torch.Tensor,
        references: torch.Tensor,
        r_owner: torch.Tensor,
        mode: str,
        condition=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, dict[str, float], list[int]]:
        """B maps of distinct queries (U, 3, H, W) and references (V, 3, H, W): pair b is
        (queries[q_owner[b]], references[r_owner[b]]). Returns query maps (B, H, W), reference maps
        (B, H, W) or None, similarities (B,), timings and the number of query masks that made each map."""
        t_start = time.perf_counter()
        dev = self.device
        q_owner, r_owner = q_owner.to(dev), r_owner.to(dev)
        h, w = queries.shape[-2:]
        unmodified = torch.cat([queries, references]).to(dev)
        self._calibrate(unmodified, condition)
        emb = self.embedder(unmodified, condition)
        q_emb, r_emb = emb[: len(queries)][q_owner], emb[len(queries) :][r_owner]  # (B, D) per pair
        similarity = self.embedder.embedding.score(q_emb, r_emb)
        t_masks = time.perf_counter()
        ref_maps = None
        if mode == "fixed":
            qmaps, n_used = self._query_maps(queries, q_owner, r_emb, (h, w), condition)
        else:
            rmasks = self.reference_masks((h, w))
            _, ref_embs = self._stream(references, rmasks, condition=condition, keep_embeddings=True)  # (V, R, D)
            # mean_j s(q_i, r_j): a linear similarity scores q_i . mean_j r_j, one target per pair for all
            # N query masks; a distance scores every r_j (EmbeddingSpec.targets).
            targets = self.embedder.embedding.targets(ref_embs[r_owner])
            qmaps, n_used = self._query_maps(queries, q_owner, targets, (h, w), condition)
            # Reference maps score the masked references against the unmodified query. Averaging over
            # the masked queries instead favours half-masked references (s(q_i, r_j) peaks where r_j
            # is masked as much as q_i): on the tests' RegionModel it missed the region at 1000 masks.
            ref_maps = self._maps_from_embeddings(ref_embs, r_owner, q_emb, rmasks).reshape(-1, h, w).float().cpu()
        qmaps = qmaps.reshape(-1, h, w).float().cpu()
        timings = {"setup_ms": (t_masks - t_start) * 1e3, "total_ms": (time.perf_counter() - t_start) * 1e3}
        return qmaps, ref_maps, similarity.cpu(), timings, [int(n) for n in n_used]

    def _explain(self, query: torch.Tensor, references: torch.Tensor, mode: str, condition) -> SaliencyResult:
        k = len(references)
        qmaps, ref_maps, similarity, timings, n_used = self._explain_stream(
            query[None], torch.zeros(k, dtype=torch.long), references, torch.arange(k), mode, condition
        )
        return SaliencyResult(qmaps, ref_maps, similarity, self.method, mode, timings, n_used)

    def _explain_pairs(
        self, queries: list[torch.Tensor], references: list[torch.Tensor], mode: str, condition
    ) -> list[SaliencyResult]:
        uq, q_owner = _distinct(queries)
        ur, r_owner = _distinct(references)
        qmaps, ref_maps, similarity, timings, n_used = self._explain_stream(
            torch.stack(uq), q_owner, torch.stack(ur), r_owner, mode, condition
        )
        return [
            SaliencyResult(
                query_map=qmaps[b],
                reference_map=ref_maps[b] if ref_maps is not None else None,
                similarity=float(similarity[b]),
                method=self.method,
                mode=mode,
                timings=dict(timings),
                n_masks_used=n_used[b],
            )
            for b in range(len(queries))
        ]


def _distinct(images: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Distinct images (by value) and, for each input, the index of its distinct image. Candidates are
    found by shape and sum, then compared element by element (no copy of every image to bytes: that
    cost ~0.2 ms a reference, a tenth of a GPU explanation for K=10)."""
    seen: dict[tuple, list[int]] = {}
    unique: list[torch.Tensor] = []
    index = []
    for image in images:
        candidates = seen.setdefault((tuple(image.shape), image.dtype, float(image.sum())), [])
        found = next((u for u in candidates if torch.equal(unique[u], image)), None)
        if found is None:
            found = len(unique)
            candidates.append(found)
            unique.append(image)
        index.append(found)
    return unique, torch.tensor(index, dtype=torch.long)
