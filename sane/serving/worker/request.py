"""One request of the serving protocol, whatever way it came: multipart form, JSON body or gRPC.

TorchServe hands a handler one dict per request: multipart fields by name (bytes, or str for text
parts, or a dict for JSON parts), a JSON body as ``{"body": dict}`` (bytes if it was not valid JSON),
and gRPC's input map as bytes by name. :func:`parse_pair_request` turns all of them into the same
:class:`PairRequest` or raises a :class:`RequestError` naming the offending field.

K references instead of one: ``"references": [base64, ...]`` in a JSON body; in a multipart form
or gRPC's input map, fields ``references.0``, ``references.1``, ... (TorchServe 0.12 hands the
worker a dict per request, so a repeated field name would arrive as its last value only).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from sane.errors import InputError

PAIR_FIELDS = ("query", "reference")
OPTIONAL_FIELDS = ("options",)
REFERENCES = "references"  # K references: a JSON list, or fields references.0, references.1, ...


class RequestError(InputError):
    """A request the server refuses: HTTP ``status`` (4xx) and the field at fault."""


@dataclass
class PairRequest:
    """Raw image bytes of the pair and the client's (not yet validated) options. A request with K
    references has them in ``references`` (``reference`` is then the first)."""

    query: bytes
    reference: bytes
    options: dict[str, Any] = field(default_factory=dict)
    references: list[bytes] | None = None


def _as_bytes(value: Any, name: str) -> bytes:
    """Image field of a multipart or gRPC request -> bytes (text parts are re-encoded losslessly)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):  # TorchServe decodes text/* parts that happen to be valid UTF-8
        return value.encode("utf-8")
    raise RequestError(f"{name}: expected image bytes, got {type(value).__name__}", name)


def _b64(value: Any, name: str) -> bytes:
    """Image field of a JSON body: a base64 string."""
    if not isinstance(value, str):
        raise RequestError(f"{name}: expected a base64 string in the JSON body, got {type(value).__name__}", name)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{name}: not valid base64: {exc}", name) from exc


def parse_options(value: Any) -> dict[str, Any]:
    """The ``options`` field: a JSON object given as a dict, text or bytes (absent -> {})."""
    if value is None:
        return {}
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"options: not UTF-8 text: {exc}", "options") from exc
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RequestError(f"options: not valid JSON: {exc}", "options") from exc
    if not isinstance(value, dict):
        raise RequestError(f"options: expected a JSON object, got {type(value).__name__}", "options")
    return value


def _reference_fields(present: set[str]) -> list[str]:
    """The ``references.<k>`` fields of a form or input map, checked to run 0..K-1 without a gap."""
    names = sorted((n for n in present if n.startswith(REFERENCES + ".")), key=lambda n: n.split(".", 1)[1])
    indices = []
    for name in names:
        suffix = name.split(".", 1)[1]
        if not suffix.isdigit():
            raise RequestError(f"unknown field {name!r}; K references are references.0, references.1, ...", name)
        indices.append(int(suffix))
    order = sorted(indices)
    if order != list(range(len(order))):
        missing = next(k for k in range(len(order) + 1) if k not in order)
        raise RequestError(f"missing field 'references.{missing}': number the references from 0 without a gap",
                           f"references.{missing}")
    return [f"{REFERENCES}.{k}" for k in order]


def _check_fields(present: set[str], indexed: bool) -> list[str] | None:
    """Check a request's field names; the names of its K references, or None for one reference."""
    references = _reference_fields(present) if indexed else ([REFERENCES] if REFERENCES in present else [])
    if indexed and REFERENCES in present:  # a repeated multipart field: TorchServe delivers only its last value
        raise RequestError(f"{REFERENCES}: in a multipart form or gRPC input map, name the K references "
                           f"{REFERENCES}.0, {REFERENCES}.1, ... (TorchServe 0.12 hands the worker one value per "
                           "field name, so a repeated field would lose all but its last image)", REFERENCES)
    unknown = sorted(present - set(PAIR_FIELDS) - set(OPTIONAL_FIELDS) - set(references))
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0]!r}; a request has {', '.join(PAIR_FIELDS + OPTIONAL_FIELDS)} "
            f"(or {REFERENCES} instead of reference)", unknown[0]
        )
    if "query" not in present:
        raise RequestError("missing field 'query'", "query")
    if references and "reference" in present:
        raise RequestError("give either reference (one image) or references (K images), not both", "references")
    if not references and "reference" not in present:
        raise RequestError("missing field 'reference'", "reference")
    return references or None


def parse_pair_request(data: dict[str, Any]) -> PairRequest:
    """TorchServe's per-request dict -> :class:`PairRequest` (or a 4xx :class:`RequestError`)."""
    if not isinstance(data, dict):
        raise RequestError(f"unexpected request payload {type(data).__name__}", "body")
    if "body" in data and not any(name in data for name in PAIR_FIELDS) and not _reference_fields(set(data)):
        body = data["body"]
        if isinstance(body, (bytes, bytearray, str)):
            try:
                body = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(
                    "body: send multipart fields query/reference[/options] or a JSON object "
                    f'{{"query": base64, "reference": base64, "options": {{...}}}} ({exc})',
                    "body",
                ) from exc
        if not isinstance(body, dict):
            raise RequestError(f"body: expected a JSON object, got {type(body).__name__}", "body")
        many = _check_fields(set(body), indexed=False)
        query = _b64(body["query"], "query")  # the query's errors first, as for one reference
        if many:
            listed = body[REFERENCES]
            if not isinstance(listed, list) or not listed:
                raise RequestError(f"{REFERENCES}: expected a non-empty list of base64 images", REFERENCES)
            references = [_b64(v, f"{REFERENCES}.{k}") for k, v in enumerate(listed)]
        else:
            references = [_b64(body["reference"], "reference")]
        return _request(query, references, body.get("options"), bool(many))
    names = _check_fields(set(data), indexed=True)
    query = _as_bytes(data["query"], "query")
    references = [_as_bytes(data[n], n) for n in names] if names else [_as_bytes(data["reference"], "reference")]
    return _request(query, references, data.get("options"), bool(names))


def _request(query: bytes, references: list[bytes], options: Any, many: bool) -> PairRequest:
    """A :class:`PairRequest` of one reference, or of K (``many``: ``references`` set)."""
    return PairRequest(query, references[0], parse_options(options), references if many else None)
