"""A small HTTP client of the serving protocol (standard library only): multipart form or JSON body.

``HttpClient(url, token).request("saliency", query_bytes, reference_bytes, {"n_masks": 500})``
returns ``(status, json_dict)``; the same call over gRPC is :class:`sane.serving.ops.grpc_client.GrpcClient`.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from typing import Any


def reference_fields(reference: bytes | list[bytes]) -> dict[str, bytes]:
    """The fields (multipart form, gRPC input map) of one reference, or of K as ``references.0..K-1``."""
    if isinstance(reference, (bytes, bytearray)):
        return {"reference": bytes(reference)}
    return {f"references.{k}": bytes(data) for k, data in enumerate(reference)}


def multipart_body(fields: dict[str, tuple[bytes, str, str | None]]) -> tuple[bytes, str]:
    """``{name: (data, content_type, filename)}`` -> (body, Content-Type header) of a multipart form."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (data, content_type, filename) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n".encode()
            + data + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class HttpClient:
    """``POST /predictions/<archive>`` (or ``/explanations/<archive>``) with an optional bearer token."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.url}{path}", data=body, method="POST")
        request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def request(
        self,
        archive: str,
        query: bytes,
        reference: bytes | list[bytes],
        options: dict[str, Any] | None = None,
        body: str = "multipart",
        endpoint: str = "predictions",
    ) -> tuple[int, dict]:
        """Send one request; ``reference`` is one image or a list of K (sent as ``references``); ``body``
        is ``multipart`` or ``json``, ``endpoint`` ``predictions`` or ``explanations``."""
        if body == "multipart":
            fields = {"query": (query, "application/octet-stream", "query")}
            for name, data in reference_fields(reference).items():
                fields[name] = (data, "application/octet-stream", name)
            if options is not None:
                fields["options"] = (json.dumps(options).encode(), "application/json", None)
            data, content_type = multipart_body(fields)
        elif body == "json":
            payload: dict[str, Any] = {"query": base64.b64encode(query).decode("ascii")}
            if isinstance(reference, (bytes, bytearray)):
                payload["reference"] = base64.b64encode(reference).decode("ascii")
            else:
                payload["references"] = [base64.b64encode(r).decode("ascii") for r in reference]
            if options is not None:
                payload["options"] = options
            data, content_type = json.dumps(payload).encode(), "application/json"
        else:
            raise ValueError(f"body must be multipart or json, got {body!r}")
        status, raw = self.post(f"/{endpoint}/{archive}", data, content_type)
        try:
            return status, json.loads(raw)
        except json.JSONDecodeError:
            return status, {"error": raw.decode("utf-8", "replace"), "field": None}
