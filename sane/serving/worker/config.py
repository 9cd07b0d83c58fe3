"""The handler's own settings: the ``handler:`` section of an archive's model-config.yaml.

TorchServe reads the top-level keys (minWorkers, batchSize, maxBatchDelay...); the handler reads
``handler:`` (device, forward batch size, option defaults and the caps that requests are held to).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

QUANTIZE_MODES = ("off", "pair", "worker")


@dataclass(frozen=True)
class ServingConfig:
    """Server-side settings of one archive; requests cannot exceed the caps."""

    device: str = "auto"  # auto (the worker's GPU if any, else CPU) | cpu | cuda | cuda:N
    batch_size: int = 256  # images per forward pass of the backbone (the engine's batch_size)
    amp: bool = False  # mixed-precision forward passes (bf16 on CPU, fp16 on GPU; maps change slightly)
    channels_last: bool = False  # NHWC batches (faster convolutions on CPU and on tensor cores)
    fuse: bool = False  # fold BatchNorm into the convolutions once at load (same function, faster forwards)
    # CPU only, an int8 copy of the model (not with amp or compile; the learned mask keeps the float model):
    # "pair" calibrates one per request on its own images (what `sane explain --int8` does: maps at
    # Pearson ~0.9998 to fp32's), "worker" (or true) once at load on the archive's pair (cheaper per
    # request, maps ~0.998, down to ~0.988 on some pairs), "off" (or false) runs fp32.
    quantize: str | bool = "off"
    compile: bool = False  # torch.compile the model once per worker (a compile per batch shape; for GPU workers)
    threads: int | None = None  # torch intra-op threads in the worker (None: torch's default)
    mask_cache_mb: int = 512  # mask banks kept for reuse per worker, in MiB (on the worker's device)
    default_method: str = "rise"
    default_mode: str = "fixed"
    default_n_masks: int = 1000
    max_n_masks: int = 4000  # cap of options.n_masks (cost is linear in it)
    max_n_reference_masks: int = 500  # cap of options.n_reference_masks (mode="both")
    max_grid: int = 32  # cap of options.grid (RISE cells per side)
    max_references: int = 16  # cap of the images in one request's ``references`` (K references, one query)
    # cap of one request's cost in forward passes of one image (sane.serving.worker.options.request_cost):
    # RISE n_masks (+ n_reference_masks per reference in mode both), LIME samples, learned-mask
    # iterations x 3 (x2 both) per reference, sliding window 625 (+625 per reference in mode both)
    max_cost: int = 4600
    methods: tuple[str, ...] | None = None  # allowed generators; None = every registered one
    extra: dict[str, Any] = field(default_factory=dict)  # settings of later archives (e.g. `sane`)

    @classmethod
    def from_model_yaml(cls, model_yaml: dict | None) -> ServingConfig:
        """Build from a parsed model-config.yaml (its ``handler:`` section); unknown keys go to ``extra``."""
        section = dict((model_yaml or {}).get("handler") or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in section.items() if k in known}
        if kwargs.get("methods") is not None:
            methods = kwargs["methods"]
            kwargs["methods"] = (methods,) if isinstance(methods, str) else tuple(methods)
        extra = {k: v for k, v in section.items() if k not in known}
        config = cls(**kwargs, extra=extra)
        config.validate()
        return config

    def validate(self) -> None:
        """Fail at worker start (not at the first request) on a nonsensical configuration."""
        for name in ("batch_size", "default_n_masks", "max_n_masks", "max_n_reference_masks", "max_grid", "max_cost",
                     "max_references"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model-config handler.{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.mask_cache_mb, bool) or not isinstance(self.mask_cache_mb, int) or self.mask_cache_mb < 0:
            raise ValueError(f"model-config handler.mask_cache_mb must be an integer >= 0, got {self.mask_cache_mb!r}")
        if self.default_n_masks > self.max_n_masks:
            raise ValueError(
                f"model-config handler.default_n_masks ({self.default_n_masks}) exceeds max_n_masks "
                f"({self.max_n_masks})"
            )
        object.__setattr__(self, "quantize", {True: "worker", False: "off"}.get(self.quantize, self.quantize))  # frozen
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"model-config handler.quantize must be one of {', '.join(QUANTIZE_MODES)} (or true/false), "
                             f"got {self.quantize!r}")
        if self.quantize != "off" and self.amp:
            raise ValueError("model-config handler.quantize (int8) and handler.amp are two precisions: pick one")
        if self.quantize != "off" and self.compile:
            raise ValueError("model-config handler.quantize (int8) and handler.compile exclude each other")
        for name in ("amp", "channels_last", "fuse", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model-config handler.{name} must be true or false, got {getattr(self, name)!r}")
        if self.default_mode not in ("fixed", "both"):
            raise ValueError(f"model-config handler.default_mode must be fixed or both, got {self.default_mode!r}")

    def resolve_device(self, gpu_id: int | None = None) -> torch.device:
        """The device the worker runs on. TorchServe gives each worker a ``gpu_id`` (round-robin over
        the archive's ``deviceIds``, none when its ``deviceType`` is cpu); ``auto`` means that GPU, else
        the CPU; a bare ``cuda`` means that GPU, else GPU 0 (and fails without CUDA); ``cuda:N`` pins
        every worker to GPU N."""
        if self.device == "cpu" or (self.device == "auto" and (gpu_id is None or not torch.cuda.is_available())):
            return torch.device("cpu")
        if self.device in ("auto", "cuda"):
            index = int(gpu_id) if gpu_id is not None else 0
        else:
            index = torch.device(self.device).index or 0
        if not torch.cuda.is_available():
            raise ValueError(f"model-config handler.device is {self.device!r} but this worker has no CUDA")
        if index >= torch.cuda.device_count():
            raise ValueError(f"GPU {index} requested (handler.device {self.device!r}, gpu_id {gpu_id}) but this "
                             f"machine has {torch.cuda.device_count()} GPU(s)")
        return torch.device(f"cuda:{index}")
