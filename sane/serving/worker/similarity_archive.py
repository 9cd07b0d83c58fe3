"""The `similarity` archive: embeddings of both images and their similarity, a batch in one forward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sane.models import Embedder
from sane.serving.worker.encoding import encode_array
from sane.serving.worker.handler import PreparedPair, ServingHandler
from sane.serving.worker.options import check_known, check_outputs

SIMILARITY_OUTPUTS = ("embeddings",)


@dataclass(frozen=True)
class SimilarityOptions:
    outputs: tuple[str, ...] = SIMILARITY_OUTPUTS


@dataclass
class SimilarityResult:
    similarity: float
    query_embedding: torch.Tensor
    reference_embedding: torch.Tensor


class SimilarityHandler(ServingHandler):
    """The model's declared similarity (cosine unless declared); embeddings returned as float32 .npy (base64)."""

    archive = "similarity"

    def parse_options(self, options: dict[str, Any], references: int = 1) -> SimilarityOptions:
        check_known(options, {"outputs"})
        return SimilarityOptions(check_outputs(options, SIMILARITY_OUTPUTS, SIMILARITY_OUTPUTS))

    def compute(self, items: dict[int, PreparedPair]) -> dict[int, Any]:
        indices = list(items)
        owners = [(i, k) for i in indices for k in range(len(items[i].all_references))]
        images = torch.stack([items[i].query for i in indices] + [items[i].all_references[k] for i, k in owners])
        embedder = Embedder(self.model, self.config.batch_size, self.config.amp, self.config.channels_last)
        emb = embedder(images).cpu()
        queries = dict(zip(indices, emb[: len(indices)]))
        refs = emb[len(indices):]
        sims = embedder.embedding.score(torch.stack([queries[i] for i, _ in owners]), refs)
        out: dict[int, Any] = {i: [] for i in indices}
        for n, (i, _) in enumerate(owners):
            out[i].append(SimilarityResult(float(sims[n]), queries[i], refs[n]))
        return {i: (found if items[i].references is not None else found[0]) for i, found in out.items()}

    def encode(self, result: SimilarityResult | list[SimilarityResult], item: PreparedPair) -> dict[str, Any]:
        """``similarity`` (and the embeddings); for K references, ``references`` holds each one's."""
        embeddings = "embeddings" in item.options.outputs
        if isinstance(result, list):
            body: dict[str, Any] = {"references": [
                {"similarity": r.similarity, **({"embedding": encode_array(r.reference_embedding)} if embeddings else {})}
                for r in result]}
            if embeddings:
                body["embeddings"] = {"query": encode_array(result[0].query_embedding)}
            return body
        body = {"similarity": result.similarity}
        if embeddings:
            body["embeddings"] = {
                "query": encode_array(result.query_embedding),
                "reference": encode_array(result.reference_embedding),
            }
        return body
