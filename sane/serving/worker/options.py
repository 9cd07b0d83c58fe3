"""Validating a request's ``options`` against the archive's caps: a bad option is a 400 naming it.

Options are strict: an unknown name, a wrong type or a value over the server's cap is refused rather
than ignored, so a typo never silently changes what is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sane.saliency import GENERATORS, MODES, SaliencyGenerator
from sane.serving.worker.config import ServingConfig
from sane.serving.worker.request import RequestError
from sane.substrate import SUBSTRATES

MAP_OUTPUTS = ("png", "npy")  # encodings of each saliency map in the response
MAX_SEED = 2**63 - 1


def _field(name: str) -> str:
    return f"options.{name}"


def check_int(options: dict, name: str, default: int, low: int, high: int, cap_name: str | None = None) -> int:
    """An integer option in [low, high]; over ``high`` names the server cap that refused it."""
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name}: expected an integer, got {value!r}", _field(name))
    if value < low:
        raise RequestError(f"{name}: must be >= {low}, got {value}", _field(name))
    if value > high:
        why = f" (the server's {cap_name})" if cap_name else ""
        raise RequestError(f"{name}: {value} is above the limit of {high}{why}", _field(name))
    return value


def check_choice(options: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = options.get(name, default)
    if not isinstance(value, str) or value not in choices:
        raise RequestError(f"{name}: expected one of {', '.join(choices)}, got {value!r}", _field(name))
    return value


def check_outputs(options: dict, allowed: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
    """``outputs``: a list naming which optional parts of the response to include."""
    value = options.get("outputs", list(default))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(f"outputs: expected a list of names from {', '.join(allowed)}, got {value!r}",
                           _field("outputs"))
    for v in value:
        if v not in allowed:
            raise RequestError(f"outputs: unknown output {v!r}; choose from {', '.join(allowed)}", _field("outputs"))
    return tuple(dict.fromkeys(value))


def check_known(options: dict, known: set[str] | frozenset[str]) -> None:
    for name in options:
        if name not in known:
            raise RequestError(f"unknown option {name!r}; this archive takes {', '.join(sorted(known))}", _field(name))


@dataclass(frozen=True)
class SaliencyOptions:
    """Validated options of a saliency request. Requests with equal :meth:`group_key` share one stream."""

    method: str
    mode: str
    n_masks: int | str | None  # the generator's size option (RISE masks or "auto", LIME samples, mask iterations)
    seed: int
    generator: tuple[tuple[str, Any], ...] = ()  # further generator options (grid, p, ...), sorted
    outputs: tuple[str, ...] = MAP_OUTPUTS

    def group_key(self) -> tuple:
        """Everything that shapes the computation (not the response encoding)."""
        return (self.method, self.mode, self.n_masks, self.seed, self.generator)

    def as_dict(self) -> dict[str, Any]:
        """The effective options, echoed in the response so a result can be reproduced."""
        return {"method": self.method, "mode": self.mode, "n_masks": self.n_masks, "seed": self.seed,
                **dict(self.generator), "outputs": list(self.outputs)}


# Generator options a client may set, with their checks; each applies only to generators that take it.
def _check_generator_option(name: str, options: dict, config: ServingConfig) -> Any:
    if name == "grid":
        return check_int(options, "grid", 8, 1, config.max_grid, "max_grid")
    if name == "n_reference_masks":
        return check_int(options, "n_reference_masks", 30, 1, config.max_n_reference_masks, "max_n_reference_masks")
    if name == "p":
        value = options["p"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
            raise RequestError(f"p: expected a number in (0, 1), got {value!r}", _field("p"))
        return float(value)
    if name == "substrate":
        return check_choice(options, "substrate", "mean", SUBSTRATES)
    raise AssertionError(name)


GENERATOR_OPTIONS = ("grid", "p", "n_reference_masks", "substrate")


def request_cost(method: str, mode: str, n_masks: int | str | None, generator: dict[str, Any],
                 references: int = 1) -> int:
    """Forward-pass equivalents one request costs (what ``handler.max_cost`` bounds): the generator's
    own :meth:`~sane.saliency.SaliencyGenerator.cost`, ``n_masks`` being its size option."""
    cls = GENERATORS[method]
    sized = {cls.size_option: n_masks} if cls.size_option else {}
    return cls.cost(mode, {**generator, **sized}, references)


def check_cost(method: str, mode: str, n_masks: int | str | None, generator: dict[str, Any], config: ServingConfig,
               references: int = 1) -> int:
    """Refuse a request above the archive's ``max_cost``, naming the option to lower."""
    cost = request_cost(method, mode, n_masks, generator, references)
    if cost > config.max_cost:
        cls = GENERATORS[method]
        field = "n_masks" if cls.size_option else ("mode" if mode == "both" else "method")
        size = f", n_masks {n_masks or cls.default(cls.size_option)}" if cls.size_option else ""
        size += f", {references} references" if references > 1 else ""
        raise RequestError(
            f"{field}: this request costs {cost} forward passes (method {method}, mode {mode}{size}), above the "
            f"server's max_cost of {config.max_cost}; lower {field}" + (" or use mode fixed" if mode == "both" else ""),
            _field(field),
        )
    return cost


SALIENCY_OPTIONS = frozenset({"method", "mode", "n_masks", "seed", "outputs", *GENERATOR_OPTIONS})


def allowed_methods(config: ServingConfig) -> tuple[str, ...]:
    """Generators this server offers: the configured list, else every registered generator."""
    registered = tuple(GENERATORS)
    if config.methods is None:
        return registered
    return tuple(m for m in config.methods if m in GENERATORS)


def validate_saliency_options(
    options: dict[str, Any], config: ServingConfig, extra_names: frozenset[str] = frozenset(), references: int = 1
) -> SaliencyOptions:
    """Check every option of a saliency request of ``references`` references; ``extra_names`` are
    accepted here and checked by the caller."""
    check_known(options, SALIENCY_OPTIONS | extra_names)
    methods = allowed_methods(config)
    method = check_choice(options, "method", config.default_method, methods)
    cls: type[SaliencyGenerator] = GENERATORS[method]
    mode = check_choice(options, "mode", config.default_mode, MODES)
    if mode not in cls.modes:
        raise RequestError(f"mode: method {method!r} supports mode {' and '.join(cls.modes)} only, got {mode!r}",
                           _field("mode"))
    # ``n_masks`` is the protocol's name for a generator's size option, capped alike for all of them:
    # RISE's masks (server default default_n_masks), LIME's samples, the learned mask's iterations
    # (their generator's default unless given). Methods of a fixed size (occlusion) take none.
    size_option = cls.size_option
    if size_option is None and "n_masks" in options:
        raise RequestError(f"n_masks: does not apply to method {method!r}", _field("n_masks"))
    n_masks = None
    generator = []
    if options.get("n_masks") == "auto":
        if not cls.auto_size:
            raise RequestError(f"n_masks: 'auto' does not apply to method {method!r}; give a number", _field("n_masks"))
        # Stops when the map has converged, at the latest at the generator's ceiling within the server's cap.
        n_masks = "auto"
        generator.append(("max_masks", min(cls.default("max_masks"), config.max_n_masks)))
    elif "n_masks" in options or size_option == "n_masks":
        n_masks = check_int(options, "n_masks", config.default_n_masks, 1, config.max_n_masks, "max_n_masks")
    seed = check_int(options, "seed", 0, 0, MAX_SEED)
    accepted = cls.parameters()
    for name in GENERATOR_OPTIONS:
        if name not in options:
            continue
        if name not in accepted:
            raise RequestError(f"{name}: does not apply to method {method!r}", _field(name))
        generator.append((name, _check_generator_option(name, options, config)))
    outputs = check_outputs(options, MAP_OUTPUTS, MAP_OUTPUTS)
    check_cost(method, mode, n_masks, dict(generator), config, references)
    return SaliencyOptions(method, mode, n_masks, seed, tuple(sorted(generator)), outputs)
