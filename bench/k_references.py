"""The retrieval case served: "why did these K results match my query?" as ONE request with K
references (`references`) against K=1, through a real TorchServe (the `saliency` archive, this
machine's CPU profile), RISE with N masks, fixed mode. A request's K references share the query's
masked stream, so K=10 should cost about one explanation (target: K=10 / K=1 <= 1.15).

Prints the median seconds of each (interleaved rounds) and their ratio, and K separate requests' time.

    python bench/k_references.py [--k 10] [--n-masks 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from sane.serving.ops.archive import profile_config
from sane.serving.ops.http_client import HttpClient
from sane.serving.ops.server import temporary_server

ROOT = Path(__file__).resolve().parents[1]


def distinct_references(data: bytes, k: int) -> list[bytes]:
    """K different JPEGs made from one image (shifted crops, every other one mirrored): a retrieval
    answer's K results are K different images, and the engine embeds identical ones only once."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    out = []
    for i in range(k):
        d = 1 + i % max(1, min(w, h) // 8)
        variant = image.crop((d, d // 2, w - d // 2, h - d)).resize((w, h))
        if i % 2:
            variant = variant.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        variant.save(buffer, format="JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--n-masks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    profile = profile_config("cpu", workers=1)
    profile["handler"].update(max_references=max(16, args.k), max_n_masks=max(4000, args.n_masks))
    q, r = (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()
    refs = distinct_references(r, args.k)
    options = {"n_masks": args.n_masks, "seed": 0}
    with tempfile.TemporaryDirectory(prefix="sane-k-refs-") as tmp, \
            temporary_server(tmp, ["saliency"], ROOT / "config.properties", profile, timeout=400) as server:
        client = HttpClient(server.inference_url, timeout=600)
        calls = {
            "K=1": lambda: client.request("saliency", q, r, options),
            f"K={args.k} in one request": lambda: client.request("saliency", q, refs, options, body="json"),
            f"{args.k} separate requests": lambda: [client.request("saliency", q, one, options) for one in refs],
        }
        for call in calls.values():  # warm-up: mask banks, allocator
            call()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"served RISE, {args.n_masks} masks, CPU profile (int8 per request), median of {args.rounds} interleaved rounds:")
    for name, seconds in median.items():
        print(f"  {name:26s} {seconds:7.3f} s")
    one, many = median["K=1"], median[f"K={args.k} in one request"]
    print(f"  K={args.k} / K=1: {many / one:.3f} (target <= 1.15); "
          f"{args.k} separate / one request of {args.k}: {median[f'{args.k} separate requests'] / many:.1f}x")


if __name__ == "__main__":
    main()
