"""How much does a RISE explanation cost beyond the forward passes it needs?

Prints, on the default model (or --model), medians of --repeats runs measured in this one process:
  (a) fixed-reference RISE with N masks / N plain forward passes at the same batch size   (target <= 1.15)
  (b) RISE against K=5 references / against 1 reference                                   (target <= 1.10)
  (c) both-images RISE / fixed-reference RISE                                             (target <= 1.20)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from sane.data import write_example_pair
from sane.images import load_image
from sane.models import load_similarity
from sane.saliency import RISE


def median_seconds(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each function over ``repeats`` rounds, run interleaved (round-robin) so
    that machine noise hits every variant alike; one warm-up call each builds the mask banks."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-masks", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()

    model, preprocess = load_similarity(args.model, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        q_path, r_path = write_example_pair(tmp, image_size=preprocess.size)
        query, reference = load_image(q_path, preprocess), load_image(r_path, preprocess)
    gen = torch.Generator().manual_seed(0)
    refs5 = torch.cat([reference[None], reference[None] + 0.1 * torch.randn((4, *reference.shape), generator=gen)])
    rise = RISE(model, n_masks=args.n_masks, batch_size=args.batch_size, amp=args.amp, device=args.device)
    embed = rise.embedder
    batch = torch.stack([query] * args.batch_size).to(args.device)
    n_batches = -(-args.n_masks // args.batch_size)

    def plain():
        for _ in range(n_batches):
            embed(batch)

    t = median_seconds(
        {
            "plain": plain,
            "fixed": lambda: rise.explain(query, reference),
            "k5": lambda: rise.explain(query, refs5),
            "both": lambda: rise.explain(query, reference, mode="both"),
        },
        args.repeats,
    )
    t_plain, t_fixed, t_k5, t_both = t["plain"], t["fixed"], t["k5"], t["both"]
    print(f"device {args.device}, N={args.n_masks}, batch {args.batch_size}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"N plain forward passes     {t_plain * 1e3:9.1f} ms")
    print(f"RISE fixed, 1 reference    {t_fixed * 1e3:9.1f} ms")
    print(f"RISE fixed, 5 references   {t_k5 * 1e3:9.1f} ms")
    print(f"RISE both images           {t_both * 1e3:9.1f} ms")
    print(f"(a) fixed / plain forward  {t_fixed / t_plain:6.3f}   (target <= 1.15)")
    print(f"(b) K=5 / K=1              {t_k5 / t_fixed:6.3f}   (target <= 1.10)")
    print(f"(c) both / fixed           {t_both / t_fixed:6.3f}   (target <= 1.20)")


if __name__ == "__main__":
    main()
