"""Explain an image pair over HTTP with nothing but the standard library (and numpy for the map).

    python clients/explain_over_http.py examples/query.jpg examples/reference.jpg \
        --url http://127.0.0.1:8080 --key "$SANE_API_KEY" --mode both --out out/http

Through the gateway (`sane deploy up`) send its API key; sends a multipart form (``--json`` for a JSON body with base64 images) to ``/predictions/saliency``
and writes the heat maps (PNG) and the raw float16 maps (.npy) from the response.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def multipart(fields: dict[str, tuple[bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, (data, content_type) in fields.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query")
    parser.add_argument("reference")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--archive", default="saliency")
    parser.add_argument("--key", default=os.environ.get("SANE_API_KEY"),
                        help="the gateway's API key (`sane deploy keys add NAME`; default: $SANE_API_KEY)")
    parser.add_argument("--key-file", default=None,
                        help="instead of --key: TorchServe's key_file.json, for a server with its own token auth on")
    parser.add_argument("--method", default="rise")
    parser.add_argument("--mode", default="fixed", choices=["fixed", "both"])
    parser.add_argument("--n-masks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="send a JSON body instead of a multipart form")
    parser.add_argument("--out", default="out/http")
    args = parser.parse_args()

    query, reference = Path(args.query).read_bytes(), Path(args.reference).read_bytes()
    options = {"method": args.method, "mode": args.mode, "n_masks": args.n_masks, "seed": args.seed}
    if args.json:
        body = json.dumps({"query": base64.b64encode(query).decode(), "reference": base64.b64encode(reference).decode(),
                           "options": options}).encode()
        content_type = "application/json"
    else:
        body, content_type = multipart({"query": (query, "application/octet-stream"),
                                        "reference": (reference, "application/octet-stream"),
                                        "options": (json.dumps(options).encode(), "application/json")})
    request = urllib.request.Request(f"{args.url}/predictions/{args.archive}", data=body, method="POST")
    request.add_header("Content-Type", content_type)
    key = json.loads(Path(args.key_file).read_text())["inference"]["key"] if args.key_file else args.key
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            response = json.load(reply)
    except urllib.error.HTTPError as exc:
        print(f"error {exc.code}: {exc.read().decode()}", file=sys.stderr)
        return 1

    import io

    import numpy as np

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"similarity {response['similarity']:.4f} ({response['method']}, mode={response['mode']})")
    for side, part in response["saliency"].items():
        (out / f"{side}_heatmap.png").write_bytes(base64.b64decode(part["png"]))
        saliency = np.load(io.BytesIO(base64.b64decode(part["npy"])), allow_pickle=False)  # float16 (H, W)
        np.save(out / f"{side}_saliency.npy", saliency)
        print(f"wrote {out / (side + '_heatmap.png')} and {side}_saliency.npy {saliency.shape} {saliency.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
