"""Where a study's similarities and explanations come from: the library in this process
(:class:`LibrarySource`), or a running server (``sane study build --server``, in the CLI).

A source answers two questions about image files: ``similarities(anchor, others)`` (the model's scores,
to sample triplets) and ``explain(anchor, references)`` (one :class:`PairExplanation` of A per reference:
the similarity, A's saliency map for that reference and A's top attributes for it), and hands back
``image(path)``: the part of the image the model sees, for the page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from sane.explain.ranker import AttributeRanker
from sane.images import open_image
from sane.models import load_similarity
from sane.models.attribute_predictors import load_attributes
from sane.models.embedder import Embedder
from sane.saliency import make_generator


@dataclass
class PairExplanation:
    """Why A matches one reference: ``similarity``, A's ``query_map`` ((H, W) over what the model sees of
    A) and A's top attributes for the match (``[{"attribute", "score", ...}]``, best first)."""

    similarity: float
    query_map: np.ndarray
    attributes: list[dict] = field(default_factory=list)


class LibrarySource:
    """Similarities and explanations computed here with the library: RISE over A for all of A's
    references in one masked stream (K references, one set of N masks), the SANE ranker for attributes.

    ``model`` is a similarity model path or :class:`~sane.models.checkpoint.LoadedModel` (None: the bundled
    default), ``attribute_model`` an attribute
    checkpoint (None: the bundled SANE model; unused without ``attributes``)."""

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        attribute_model: str | os.PathLike | None = None,
        attributes: bool = True,
        n_masks: int = 2000,
        top_k: int = 3,
        seed: int = 0,
        batch_size: int = 256,
        device: str = "cpu",
    ):
        self.model, self.preprocess = load_similarity(model, device)
        self.embedder = Embedder(self.model, batch_size=batch_size)
        self.generator = make_generator(self.model, "rise", n_masks=n_masks, seed=seed, batch_size=batch_size,
                                        preprocess=self.preprocess)
        self.ranker = None
        if attributes:
            attribute_net, self.attribute_preprocess = load_attributes(attribute_model, device)
            self.ranker = AttributeRanker(attribute_net)
        self.top_k = top_k
        named = getattr(model, "source", model)  # a LoadedModel (from the CLI's declarations) or a path
        self.description = {"source": "library", "model": str(named) if named else "bundled default",
                            "attribute_model": (str(attribute_model) if attribute_model else "bundled SANE")
                            if attributes else None, "method": "rise", "n_masks": n_masks, "seed": seed}
        self._embeddings: dict[str, torch.Tensor] = {}

    def _tensor(self, path: str) -> torch.Tensor:
        return self.preprocess.to_tensor(self.preprocess.open(path, "image"))

    def image(self, path: str) -> Image.Image:
        """The part of the image at ``path`` that the model sees, at the image's own resolution."""
        return self.preprocess.visible(open_image(path, "image"))

    def _embed(self, paths: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(paths) if p not in self._embeddings]
        if missing:
            with torch.inference_mode():
                found = self.embedder(torch.stack([self._tensor(p) for p in missing]))
            self._embeddings.update(zip(missing, found))
        return torch.stack([self._embeddings[p] for p in paths])

    def similarities(self, anchor: str, others: list[str]) -> list[float]:
        """s(anchor, other) for each of ``others``."""
        embedded = self._embed([anchor, *others])
        return self.embedder.embedding.score(embedded[:1], embedded[1:]).tolist()

    def explain(self, anchor: str, references: list[str]) -> list[PairExplanation]:
        """One explanation of ``anchor`` per reference, from one RISE stream over ``anchor``."""
        query = self._tensor(anchor)
        result = self.generator.explain(query, torch.stack([self._tensor(r) for r in references]))
        maps = result.query_map.reshape(len(references), *result.query_map.shape[-2:])
        scores = torch.as_tensor(result.similarity).reshape(-1).tolist()
        explanations = []
        for k, score in enumerate(scores):
            attributes = []
            if self.ranker is not None:
                visible = self.attribute_preprocess.to_tensor(self.image(anchor))
                attributes = [e.to_dict() for e in self.ranker.rank(visible, maps[k], self.top_k)]
            explanations.append(PairExplanation(float(score), maps[k].numpy(), attributes))
        return explanations
