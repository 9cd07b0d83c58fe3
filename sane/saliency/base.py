"""The base of every saliency generator: one ``explain()`` template, methods override one hook.

In the spirit of Captum's perturbation classes (``Occlusion(FeatureAblation)``): the template checks
the inputs and the mode, turns one reference into a batch of one, times the call and unbatches the
result; a method implements :meth:`SaliencyGenerator._explain` for a (K, 3, H, W) reference batch.
Each method also declares, as class attributes, what a caller (the CLI, the server's options) needs
to know before anything runs: the modes it supports, the constructor argument that sizes it, whether
B pairs can share one masked stream, and its cost in forward passes.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sane.errors import InputError
from sane.models.embedder import Embedder
from sane.saliency.result import SaliencyResult

MODES = ("fixed", "both")  # every mode a generator may support
SIZE_OPTIONS = ("n_masks", "n_samples", "iterations")  # the names generators give to their size


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


@functools.cache
def _parameters(cls: type) -> tuple[frozenset[str], dict[str, Any]]:
    """Keyword names (and defaults) of ``cls``'s constructor, following ``**kwargs`` up its bases."""
    names: set[str] = set()
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "model"):
                names.add(p.name)
                defaults.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return frozenset(names), defaults


class SaliencyGenerator:
    """Base of the saliency generators: the model runner, the seed and the ``explain()`` template.

    Class attributes a method declares:

    - ``method``: its registry name; ``modes``: the modes it supports (``"fixed"``, ``"both"``);
    - ``size_option``: the constructor argument that sets how much work one map takes (RISE's
      ``n_masks``, LIME's ``n_samples``, the learned mask's ``iterations``), None for a fixed size;
    - ``shares_stream``: whether :meth:`explain_pairs` explains B pairs as one stream of masked
      images (the perturbation engine) rather than one pair at a time;
    - ``auto_size``: whether the size option takes ``"auto"`` (stop when the map has converged);
    - ``needs_gradients``: whether it optimises through the model (then an int8 model will not do).
    """

    method = "generator"
    modes: tuple[str, ...] = MODES
    size_option: str | None = None
    shares_stream = False
    auto_size = False
    needs_gradients = False  # optimises through the model (no int8 copy)

    def __init__(
        self,
        model: nn.Module,
        batch_size: int = 256,
        seed: int = 0,
        amp: bool = False,
        channels_last: bool = False,
        device: str | torch.device | None = None,
        progress: bool = False,
        fuse: bool = False,
        compile: bool = False,
        quantize: bool = False,
    ):
        self.embedder = Embedder(model, batch_size, amp, channels_last, device, fuse, compile, quantize)
        self.seed = int(seed)
        self.progress = progress

    @property
    def model(self) -> nn.Module:
        return self.embedder.model

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    # -- what a caller may ask the class before building one ---------------------------------------
    @classmethod
    def parameters(cls) -> frozenset[str]:
        """Keyword options the constructor accepts (computed once per class)."""
        return _parameters(cls)[0]

    @classmethod
    def default(cls, name: str) -> Any:
        """The constructor's default of option ``name``."""
        return _parameters(cls)[1][name]

    @classmethod
    def option(cls, options: Mapping[str, Any], name: str) -> Any:
        """``options[name]`` when given (not None), else the constructor's default."""
        value = options.get(name)
        return cls.default(name) if value is None else value

    @classmethod
    def check_mode(cls, mode: str) -> str:
        """``mode`` if this method supports it, else an :class:`InputError` naming ``mode``."""
        if mode not in cls.modes:
            known = f"supports mode {' and '.join(cls.modes)} only" if mode in MODES else f"modes are {MODES}"
            raise InputError(f"method {cls.method!r} {known}, got mode {mode!r}", "mode")
        return mode

    @classmethod
    def cost(cls, mode: str, options: Mapping[str, Any] | None = None, references: int = 1) -> int:
        """Forward-pass equivalents (one image at the model's size through the backbone) of explaining
        one query against ``references`` references with these constructor ``options`` (defaults for
        the rest): what a server's budget bounds."""
        raise NotImplementedError

    # -- the template -------------------------------------------------------------------------------
    def explain(self, query: torch.Tensor, reference: torch.Tensor, mode: str = "fixed", condition=None,
                **kwargs) -> SaliencyResult:
        """Saliency of ``query`` (and in mode='both' of ``reference``) for their similarity.

        ``reference`` is (3, H, W) or a (K, 3, H, W) batch (then maps are (K, H, W) and the similarity
        a (K,) tensor). ``condition`` is passed to conditional models; further keyword arguments go to
        the method's hook (e.g. LIME's ``segments``).
        """
        self.check_mode(mode)
        q, refs, batched = check_pair(query, reference)
        start = time.perf_counter()
        result = self._explain(q, refs, mode, condition, **kwargs)
        result.timings.setdefault("total_ms", (time.perf_counter() - start) * 1e3)
        return result if batched else result.select(0)

    def _explain(self, query: torch.Tensor, references: torch.Tensor, mode: str, condition) -> SaliencyResult:
        """The hook: maps of a checked (3, H, W) query against (K, 3, H, W) references, batched (K first)."""
        raise NotImplementedError

    def explain_pairs(self, queries: list[torch.Tensor], references: list[torch.Tensor], mode: str = "fixed",
                      condition=None) -> list[SaliencyResult]:
        """Explain B (query, reference) pairs (a served batch): one result per pair, as :meth:`explain`.

        A generator that ``shares_stream`` explains pairs of one size as ONE stream of masked images
        (pairs that share a query share its stream: the K-reference path); equal, up to float
        rounding, to explaining them one by one, which is what the others do.
        """
        if len(queries) != len(references):
            raise InputError(f"{len(queries)} queries but {len(references)} references", "reference")
        self.check_mode(mode)
        for q, r in zip(queries, references):
            check_pair(q, r)
        one_size = len({tuple(t.shape) for t in (*queries, *references)}) == 1
        if not self.shares_stream or not one_size or len(queries) == 1:
            return [self.explain(q, r, mode, condition) for q, r in zip(queries, references)]
        return self._explain_pairs(queries, references, mode, condition)

    def _explain_pairs(self, queries: list[torch.Tensor], references: list[torch.Tensor], mode: str,
                       condition) -> list[SaliencyResult]:
        """The shared-stream hook of generators that declare ``shares_stream``."""
        raise NotImplementedError
