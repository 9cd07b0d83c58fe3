"""How fast your own model explains: ViT-B/16 at 224 px (torchvision, random weights, the README's
recipe) by default, or any --model with its declarations. Prints the time per masked forward pass,
the time of a 2000-mask RISE explanation extrapolated from it, and RISE's cost over the same number
of plain forward passes, all measured in this one run.

    python bench/own_model.py                       # ViT-B/16 (factory vit_b16:image_encoder), 224 px
    python bench/own_model.py --masks 64 --amp      # bf16 autocast on CPU (fp16 on a GPU)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "own_model"))

from sane.models import Embedder  # noqa: E402
from sane.models.checkpoint import load_model  # noqa: E402
from sane.saliency import RISE  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_b16:image_encoder")
    parser.add_argument("--preprocess", default="imagenet")
    parser.add_argument("--masks", type=int, default=64, help="masks per timed explanation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    loaded = load_model(args.model, args.device, preset=args.preprocess)
    size = loaded.preprocess.size
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))
    batch = image.expand(args.batch_size, -1, -1, -1).contiguous()
    embedder = Embedder(loaded.model, args.batch_size, amp=args.amp)
    embedder(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(max(1, args.masks // args.batch_size)):
        embedder(batch)
    plain = (time.perf_counter() - start) / (max(1, args.masks // args.batch_size) * args.batch_size)

    generator = RISE(loaded.model, n_masks=args.masks, batch_size=args.batch_size, amp=args.amp)
    generator.explain(image, image)  # warm-up (mask bank, allocator)
    start = time.perf_counter()
    generator.explain(image, image)
    rise = (time.perf_counter() - start) / args.masks
    print(f"{args.model} at {size} px on {args.device} ({torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{'amp' if args.amp else 'fp32'}), {loaded.checks['dim']}-d embeddings")
    print(f"  plain forward       {plain * 1e3:8.1f} ms per image")
    print(f"  RISE                {rise * 1e3:8.1f} ms per mask ({args.masks} masks): "
          f"{rise / plain:.3f} x the plain forward passes")
    print(f"  2000-mask RISE map  {2000 * rise:8.1f} s (extrapolated)")


if __name__ == "__main__":
    main()
