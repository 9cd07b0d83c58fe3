"""One request of the serving protocol, whatever way it came: multipart form, JSON body or gRPC.

TorchServe hands a handler one dict per request: multipart fields by name (bytes, or str for text
parts, or a dict for JSON parts), a JSON body as ``{"body": dict}`` (bytes if it was not valid JSON),
and gRPC's input map as bytes by name. :func:`parse_pair_request` turns all of them into the same
:class:`PairRequest` or raises a :class:`RequestError` naming the offending field.
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


class RequestError(InputError):
    """A request the server refuses: HTTP ``status`` (4xx) and the field at fault."""


@dataclass
class PairRequest:
    """Raw image bytes of the pair and the client's (not yet validated) options."""

    query: bytes
    reference: bytes
    options: dict[str, Any] = field(default_factory=dict)


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


def _check_fields(present: set[str]) -> None:
    unknown = sorted(present - set(PAIR_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0]!r}; a request has {', '.join(PAIR_FIELDS + OPTIONAL_FIELDS)}", unknown[0]
        )
    for name in PAIR_FIELDS:
        if name not in present:
            raise RequestError(f"missing field {name!r}", name)


def parse_pair_request(data: dict[str, Any]) -> PairRequest:
    """TorchServe's per-request dict -> :class:`PairRequest` (or a 4xx :class:`RequestError`)."""
    if not isinstance(data, dict):
        raise RequestError(f"unexpected request payload {type(data).__name__}", "body")
    if "body" in data and not any(name in data for name in PAIR_FIELDS):
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
        _check_fields(set(body))
        return PairRequest(
            query=_b64(body["query"], "query"),
            reference=_b64(body["reference"], "reference"),
            options=parse_options(body.get("options")),
        )
    _check_fields(set(data))
    return PairRequest(
        query=_as_bytes(data["query"], "query"),
        reference=_as_bytes(data["reference"], "reference"),
        options=parse_options(data.get("options")),
    )
