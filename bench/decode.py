"""Decoding a large photo for the model: full decode + resize vs JPEG draft decoding (libjpeg's DCT
scaling to the smallest of 1/8, 1/4, 1/2 that keeps the model's side), on a 6000 x 6000 JPEG made here.

Prints the median seconds and the decoded pixels of each, their ratio, and how far apart the model's
inputs are (mean absolute difference in normalised units).

    python bench/decode.py [--side 6000] [--size 112] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from sane.images import Preprocess, open_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=6000)
    parser.add_argument("--size", type=int, default=112, help="the model's input side")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).resize((args.side, args.side),
                                                                                       Image.BICUBIC)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    pre = Preprocess(args.size)
    ways = {"full decode": lambda: open_image(data), "draft decode": lambda: pre.open(data)}
    seconds, decoded, tensors = {}, {}, {}
    for name, decode in ways.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            image = decode()
            tensor = pre.to_tensor(image)
            times.append(time.perf_counter() - start)
        seconds[name], decoded[name], tensors[name] = statistics.median(times), image.size, tensor
    print(f"{args.side} x {args.side} JPEG ({len(data) / 1e6:.1f} MB) for a {args.size}-px model, "
          f"median of {args.repeats}:")
    for name in ways:
        w, h = decoded[name]
        print(f"  {name:13s} {seconds[name] * 1e3:8.1f} ms   decoded {w} x {h} ({w * h / 1e6:.2f} MP)")
    difference = float((tensors["draft decode"] - tensors["full decode"]).abs().mean())
    print(f"  draft / full: time {seconds['draft decode'] / seconds['full decode']:.3f}; mean |input difference| "
          f"{difference:.4f} (normalised units)")


if __name__ == "__main__":
    main()
