"""Explain an image pair over gRPC (TorchServe's ``Predictions`` RPC).

    python clients/grpc_client.py examples/query.jpg examples/reference.jpg \
        --address 127.0.0.1:7070 --key-file out/serve/key_file.json --mode both --out out/grpc

The Python stubs are generated on first use from the protos inside the installed TorchServe jar
(``sane.serving.grpc_client.build_stubs``, into ``build/``); nothing generated is committed. The input
map is ``{"query": bytes, "reference": bytes, "options": JSON bytes}`` and the reply holds the same
JSON bytes as an HTTP response (an error is a JSON ``{"error", "field"}`` body: TorchServe 0.12 does not
map per-request status codes onto gRPC).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sane.serving.commands import write_response
from sane.serving.grpc_client import GrpcClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query")
    parser.add_argument("reference")
    parser.add_argument("--address", default="127.0.0.1:7070")
    parser.add_argument("--archive", default="saliency")
    parser.add_argument("--key-file", default="out/serve/key_file.json", help="TorchServe's key_file.json (if any)")
    parser.add_argument("--method", default="rise")
    parser.add_argument("--mode", default="fixed", choices=["fixed", "both"])
    parser.add_argument("--n-masks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/grpc")
    args = parser.parse_args()

    key_file = Path(args.key_file)
    token = json.loads(key_file.read_text())["inference"]["key"] if key_file.is_file() else None
    options = {"method": args.method, "mode": args.mode, "n_masks": args.n_masks, "seed": args.seed}
    with GrpcClient(args.address, token) as client:
        response = client.request(args.archive, Path(args.query).read_bytes(), Path(args.reference).read_bytes(), options)
    if "error" in response:
        print(f"error: {response['error']} (field {response.get('field')})", file=sys.stderr)
        return 1
    for line in write_response(response, args.out, args.query, args.reference):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
