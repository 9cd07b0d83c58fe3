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

    def parse_options(self, options: dict[str, Any]) -> SimilarityOptions:
        check_known(options, {"outputs"})
        return SimilarityOptions(check_outputs(options, SIMILARITY_OUTPUTS, SIMILARITY_OUTPUTS))

    def compute(self, items: dict[int, PreparedPair]) -> dict[int, Any]:
        indices = list(items)
        images = torch.stack([items[i].query for i in indices] + [items[i].reference for i in indices])
        embedder = Embedder(self.model, self.config.batch_size, self.config.amp, self.config.channels_last)
        emb = embedder(images).cpu()
        q, r = emb[: len(indices)], emb[len(indices) :]
        sims = embedder.embedding.score(q, r)
        return {i: SimilarityResult(float(sims[k]), q[k], r[k]) for k, i in enumerate(indices)}

    def encode(self, result: SimilarityResult, item: PreparedPair) -> dict[str, Any]:
        body: dict[str, Any] = {"similarity": result.similarity}
        if "embeddings" in item.options.outputs:
            body["embeddings"] = {
                "query": encode_array(result.query_embedding),
                "reference": encode_array(result.reference_embedding),
            }
        return body
