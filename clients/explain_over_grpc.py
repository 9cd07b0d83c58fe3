"""Explain an image pair over gRPC (TorchServe's ``Predictions`` RPC).

    python clients/explain_over_grpc.py examples/query.jpg examples/reference.jpg \
        --address 127.0.0.1:7070 --key "$SANE_API_KEY" --mode both --out out/grpc

Through the gateway (`sane deploy up`) the call carries its API key as metadata
(``authorization: Bearer <key>``). The Python stubs are generated on first use from the protos inside the installed TorchServe jar
(``sane.serving.ops.grpc_client.build_stubs``, into ``build/``); nothing generated is committed. The input
map is ``{"query": bytes, "reference": bytes, "options": JSON bytes}`` and the reply holds the same
JSON bytes as an HTTP response (an error is a JSON ``{"error", "field"}`` body: TorchServe 0.12 does not
map per-request status codes onto gRPC).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc

from sane.cli.serving import write_response
from sane.serving.ops.grpc_client import GrpcClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query")
    parser.add_argument("reference")
    parser.add_argument("--address", default="127.0.0.1:7070")
    parser.add_argument("--archive", default="saliency")
    parser.add_argument("--key", default=os.environ.get("SANE_API_KEY"),
                        help="the gateway's API key (`sane deploy keys add NAME`; default: $SANE_API_KEY)")
    parser.add_argument("--key-file", default=None,
                        help="instead of --key: TorchServe's key_file.json, for a server with its own token auth on")
    parser.add_argument("--method", default="rise")
    parser.add_argument("--mode", default="fixed", choices=["fixed", "both"])
    parser.add_argument("--n-masks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/grpc")
    args = parser.parse_args()

    token = json.loads(Path(args.key_file).read_text())["inference"]["key"] if args.key_file else args.key
    options = {"method": args.method, "mode": args.mode, "n_masks": args.n_masks, "seed": args.seed}
    try:
        with GrpcClient(args.address, token) as client:
            response = client.request(args.archive, Path(args.query).read_bytes(), Path(args.reference).read_bytes(),
                                      options)
    except grpc.RpcError as exc:  # e.g. UNAUTHENTICATED from the gateway: no or a wrong key
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if "error" in response:
        print(f"error: {response['error']} (field {response.get('field')})", file=sys.stderr)
        return 1
    for line in write_response(response, args.out, args.query, args.reference):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
