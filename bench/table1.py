"""The paper's Table 1 on this machine, the maps' quality, and the same pairs explained by peers.

On the default model (or --model) and synthetic same-class test pairs, in one run:
  1. seconds per map of every method and mode of the paper's Table 1 (sliding window, LIME, Mask,
     RISE; fixed reference and both images), at the paper's sizes unless told otherwise, beside the
     paper's 2020-GPU numbers;
  2. insertion / deletion AUC (x100), pointing game and mass inside the object of those query maps
     (plus the random baseline), on the same pairs;
  3. the peers on the first --peer-pairs pairs, same model, same settings: Captum's Occlusion (our
     625 windows: the image padded by the 8 px our windows hang over the border), Captum's Lime (our
     superpixels, sample count, kernel and Lasso), TorchRay's rise (same N, grid, p, batch): time
     ratio ours / theirs (< 1: ours is faster) and the Pearson correlation of the maps.

Peers come from the `bench` extra (pip install -e '.[bench]'); a missing one is reported as
unavailable, never replaced by a re-implementation. Not a test: the machine is shared and noisy,
rerun before quoting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sane.data import AttributeDataset, write_dataset
from sane.evaluation.saliency_maps import positive_pairs
from sane.metrics import insertion_deletion, mass_inside, pearson, pointing_game
from sane.models import Embedder, load_similarity
from sane.saliency import LIME, RISE, LearnedMask, RandomSaliency, SlidingWindow
from sane.saliency.masks import window_positions
from sane.serving.ops.archive import profile_config
from sane.serving.worker.config import ServingConfig

# Paper (supplementary Table 1): seconds per map on a 2020 GPU.
PAPER = {
    ("sliding_window", "fixed"): 0.2,
    ("lime", "fixed"): 1.2,
    ("mask", "fixed"): 4.1,
    ("rise", "fixed"): 0.3,
    ("sliding_window", "both"): 2.5,
    ("mask", "both"): 7.2,
    ("rise", "both"): 5.8,
}
ROWS = list(PAPER)


def log(msg: str) -> None:
    print(msg, flush=True)


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def best_batch_size(model: nn.Module, image: torch.Tensor, candidates=(32, 64, 128, 256), images: int = 512,
                    **options) -> int:
    """The batch size with the highest forward throughput on this machine (CPU caches favour small ones);
    ``options`` are the Embedder's speed options (e.g. ``quantize=True``)."""
    embed = Embedder(model, max(candidates), **options)
    speed = dict.fromkeys(candidates, float("inf"))
    for _ in range(2):  # two interleaved sweeps, best of each: the first calls of a process run slow
        for bs in candidates:
            batch = image[None].expand(bs, -1, -1, -1).contiguous()
            embed(batch)
            rounds = max(1, images // bs)
            start = time.perf_counter()
            for _ in range(rounds):
                embed(batch)
            speed[bs] = min(speed[bs], (time.perf_counter() - start) / (rounds * bs))
    label = f" ({', '.join(options)})" if options else ""
    log(f"forward ms/image by batch size{label}: " + ", ".join(f"{bs}: {s * 1e3:.2f}" for bs, s in speed.items()))
    return min(speed, key=speed.get)


class SimilarityToReference(nn.Module):
    """f(x) = s(x, r) as a one-output "classifier" (B, 1), the form the peers expect.

    ``crop`` removes a border first (Captum's Occlusion runs on a padded image, see below).
    """

    def __init__(self, model: nn.Module, reference_embedding: torch.Tensor, crop: int = 0):
        super().__init__()
        self.model = model
        self.register_buffer("target", reference_embedding)
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop:
            x = x[..., self.crop : -self.crop, self.crop : -self.crop]
        return (F.normalize(self.model(x).float(), dim=1) @ self.target)[:, None]


class Autocast(nn.Module):
    """``f`` run on NHWC input under bf16 (CPU) / fp16 (CUDA) autocast, float32 out: TorchRay given
    the same optimised forward as our ``RISE(..., fuse=True, channels_last=True, amp=True)``."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
        with torch.autocast(x.device.type, dtype=dtype):
            return self.f(x.contiguous(memory_format=torch.channels_last)).float()


def captum_occlusion(f_padded, query, window: int, stride: int, pad: int, ppe: int) -> torch.Tensor:
    """Captum Occlusion with our windows: on the image padded by ``pad`` px of the substrate (0) so that
    its windows (no overhang in Captum) are exactly ours; the map is cropped back."""
    from captum.attr import Occlusion

    x = F.pad(query[None], (pad, pad, pad, pad), value=0.0)
    with torch.no_grad():
        attr = Occlusion(f_padded).attribute(
            x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0.0, target=0,
            perturbations_per_eval=ppe,
        )
    return attr[0, 0, pad:-pad, pad:-pad] if pad else attr[0, 0]


def captum_lime(f, query, segments, n_samples: int, kernel_width: float, alpha: float, ppe: int, seed: int):
    """Captum Lime with our superpixels, sample count, LIME kernel on the on/off vectors and Lasso alpha."""
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import Lime

    from sane.saliency.lime import kernel_weights

    def kernel(original, perturbed, interpretable_sample, **kwargs):
        return kernel_weights(interpretable_sample.float(), kernel_width)

    torch.manual_seed(seed)
    lime = Lime(f, interpretable_model=SkLearnLasso(alpha=alpha), similarity_func=kernel)
    with torch.no_grad():
        attr = lime.attribute(
            query[None], baselines=0.0, target=0, feature_mask=segments[None, None].to(query.device),
            n_samples=n_samples, perturbations_per_eval=ppe,
        )
    return attr[0, 0]


def torchray_rise(f, query, n: int, grid: int, p: float, batch_size: int, seed: int) -> torch.Tensor:
    """TorchRay's rise on f(x) = s(x, r) (it multiplies the image by the masks: substrate 0 = ours).

    TorchRay returns ``sum_i sigmoid(f(x_i)) M_i / N``: a sigmoid and no division by the coverage.
    """
    from torchray.attribution.rise import rise

    return rise(f, query[None], seed=seed, num_masks=n, num_cells=grid, p=p, batch_size=batch_size)[0, 0]


class _Zero(nn.Module):
    """A constant (B, 1) zero output: TorchRay's rise on it returns sigmoid(0) * its masks' coverage / N."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((len(x), 1))


def torchray_coverage(query, n: int, grid: int, p: float, batch_size: int, seed: int) -> torch.Tensor:
    """sum_i M_i / N of the masks TorchRay draws for this seed (to divide its map by, as ours is)."""
    return 2 * torchray_rise(_Zero(), query, n, grid, p, batch_size, seed)


def _finite(obj):
    """The report with NaN (not measured) as null, so the file is standard JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def peer_versions() -> dict[str, str | None]:
    out = {}
    for name in ("captum", "torchray"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "installed")
        except (ImportError, RuntimeError, AttributeError) as exc:  # missing, or broken on this torch
            out[name] = None
            log(f"{name}: unavailable ({type(exc).__name__}: {exc}); install the bench extra: pip install -e '.[bench]'")
    return out


def load_pairs(args, preprocess):
    """Synthetic test pairs (images, object masks): --data, else data/shapes if present, else a fresh set."""
    data = args.data
    tmp = None
    if data is None:
        if Path("data/shapes/masks").is_dir():
            data = "data/shapes"
        else:
            tmp = tempfile.TemporaryDirectory()
            data = tmp.name
            log(f"writing a small synthetic data set ({args.synth_n} images) to {data}")
            write_dataset(data, args.synth_n, seed=0, image_size=preprocess.size, progress=False)
    dataset = AttributeDataset(data, split="test", preprocess=preprocess, with_masks=True)
    pairs = positive_pairs(dataset, args.pairs, args.seed)
    items = [(dataset[q], dataset[r]) for q, r in pairs]
    if tmp is not None:
        tmp.cleanup()
    log(f"{len(items)} same-class test pairs from {data if tmp is None else 'a temporary synthetic set'}")
    return [(a["image"], b["image"], a["mask"], b["mask"]) for a, b in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None, help="AwA2-format synthetic set with masks (default: data/shapes "
                        "if present, else a temporary one of --synth-n images)")
    parser.add_argument("--synth-n", type=int, default=420)
    parser.add_argument("--pairs", type=int, default=8, help="pairs for Table 1 timings and quality")
    parser.add_argument("--peer-pairs", type=int, default=3, help="of those, pairs also explained by the peers")
    parser.add_argument("--n-masks", type=int, default=2000, help="RISE N (paper 2000)")
    parser.add_argument("--reference-masks", type=int, default=30, help="RISE masks on the reference (paper 30)")
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--n-samples", type=int, default=1000, help="LIME samples (paper 1000)")
    parser.add_argument("--iterations", type=int, default=500, help="Mask Adam steps (paper 500)")
    parser.add_argument("--mask-perturbation", default="blur", choices=["blur", "deletion", "noise"],
                        help="Mask's perturbation operator (paper/released code: blur)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the fastest forward batch on this machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--out", default="results/table1.json", help="JSON report ('' to skip)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, preprocess = load_similarity(args.model, args.device)
    pairs = load_pairs(args, preprocess)
    dev = torch.device(args.device)
    bs = args.batch_size or best_batch_size(model, pairs[0][0].to(dev))
    log(f"device {args.device}, torch threads {torch.get_num_threads()}, batch size {bs}")

    generators = {
        "sliding_window": SlidingWindow(model, batch_size=bs, seed=args.seed),
        "lime": LIME(model, n_samples=args.n_samples, batch_size=bs, seed=args.seed),
        "mask": LearnedMask(model, iterations=args.iterations, seed=args.seed, perturbation=args.mask_perturbation),
        "rise": RISE(model, n_masks=args.n_masks, grid=args.grid, p=args.p, batch_size=bs, seed=args.seed,
                     n_reference_masks=args.reference_masks),
    }
    # Warm-up on pair 0: mask banks, lazy imports (scikit-image, scikit-learn), allocator.
    q0, r0 = pairs[0][0], pairs[0][1]
    for name, ex in generators.items():
        if name == "mask":
            LearnedMask(model, iterations=3, perturbation=args.mask_perturbation).explain(q0, r0, mode="both")
        else:
            for mode in ("fixed", "both") if name != "lime" else ("fixed",):
                ex.explain(q0, r0, mode=mode)

    # ---- 1 + 2: Table 1 and quality -------------------------------------------------------------
    seconds: dict[tuple[str, str], list[float]] = {row: [] for row in ROWS}
    maps: dict[tuple[str, str], list[torch.Tensor]] = {row: [] for row in ROWS}
    ref_maps: dict[tuple[str, str], list[torch.Tensor]] = {row: [] for row in ROWS if row[1] == "both"}
    lime_segments = []
    for i, (q, r, _, _) in enumerate(pairs):
        for name, mode in ROWS:
            result, sec = timed(generators[name].explain, q, r, mode=mode)
            seconds[(name, mode)].append(sec)
            maps[(name, mode)].append(result.query_map)
            if mode == "both":
                ref_maps[(name, mode)].append(result.reference_map)
            if name == "lime":
                lime_segments.append(result.segments)
        log(f"pair {i + 1}/{len(pairs)}: " + ", ".join(f"{n}/{m} {seconds[(n, m)][-1]:.2f}s" for n, m in ROWS))
    random_maps = [RandomSaliency(model, seed=args.seed + i).explain(q, r).query_map for i, (q, r, _, _) in
                   enumerate(pairs)]

    tensor_pairs = [(q, r) for q, r, _, _ in pairs]
    quality = {}
    for key, mlist in list(maps.items()) + [(("random", "fixed"), random_maps)]:
        scores = insertion_deletion(model, tensor_pairs, mlist, substrate="constant", preprocess=preprocess)
        row = {
            "insertion": scores["insertion"],
            "deletion": scores["deletion"],
            "pointing_game": float(np.mean([pointing_game(m, p[2]) for m, p in zip(mlist, pairs)])),
            "mass_inside": float(np.mean([mass_inside(m, p[2]) for m, p in zip(mlist, pairs)])),
        }
        if key in ref_maps:
            row["reference_pointing_game"] = float(np.mean([pointing_game(m, p[3]) for m, p in zip(ref_maps[key], pairs)]))
        quality[f"{key[0]}/{key[1]}"] = row

    log("")
    log(f"Table 1 on this machine ({args.device}, median over {len(pairs)} pairs; paper: 2020 GPU)")
    log(f"sizes: sliding window 625 (+36 on the reference), LIME {args.n_samples} samples, Mask {args.iterations} "
        f"steps ({args.mask_perturbation}), RISE N={args.n_masks} (+{args.reference_masks}), batch {bs}")
    log(f"{'method':<16}{'fixed ref?':>11}{'s/map':>9}{'paper s':>9}")
    table1 = {}
    for name, mode in ROWS:
        med = statistics.median(seconds[(name, mode)])
        table1[f"{name}/{mode}"] = {"seconds_per_map": med, "paper_seconds": PAPER[(name, mode)],
                                    "all_seconds": seconds[(name, mode)]}
        log(f"{name:<16}{'Y' if mode == 'fixed' else 'N':>11}{med:>9.2f}{PAPER[(name, mode)]:>9.1f}")

    log("")
    log(f"Quality on the same {len(pairs)} pairs (query maps; insertion/deletion x100, constant grey substrate)")
    log(f"{'method/mode':<22}{'insertion^':>11}{'deletion_v':>11}{'pointing^':>10}{'mass_in^':>9}{'ref point^':>11}")
    for key, row in quality.items():
        ref = row.get("reference_pointing_game")
        log(f"{key:<22}{row['insertion']:>11.1f}{row['deletion']:>11.1f}{row['pointing_game']:>10.2f}"
            f"{row['mass_inside']:>9.2f}{(f'{ref:.2f}' if ref is not None else '-'):>11}")
    order_ins = sorted(quality, key=lambda k: -quality[k]["insertion"])
    order_del = sorted(quality, key=lambda k: quality[k]["deletion"])
    log("ordering by insertion: " + " > ".join(order_ins))
    log("ordering by deletion:  " + " < ".join(order_del))

    # ---- 3: peers ----------------------------------------------------------------------------
    report = {"device": args.device, "threads": torch.get_num_threads(), "batch_size": bs, "pairs": len(pairs),
              "sizes": {"n_masks": args.n_masks, "reference_masks": args.reference_masks, "grid": args.grid,
                        "p": args.p, "n_samples": args.n_samples, "iterations": args.iterations,
                        "mask_perturbation": args.mask_perturbation},
              "table1": table1, "quality": quality}
    if not args.skip_peers:
        report["peers"] = run_peers(args, model, pairs[: args.peer_pairs], generators, lime_segments, bs)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(_finite(report), indent=2) + "\n")
        log(f"wrote {args.out}")


def run_peers(args, model, pairs, generators, lime_segments, bs) -> dict:
    """Time and compare our maps with Captum's and TorchRay's on the same pairs and settings."""
    versions = peer_versions()
    dev = torch.device(args.device)
    sw, lime, rise = generators["sliding_window"], generators["lime"], generators["rise"]
    rise_opts = {"n_masks": args.n_masks, "grid": args.grid, "p": args.p, "batch_size": bs, "seed": args.seed}
    rise_amp = RISE(model, **rise_opts, amp=True)
    # The library's inference options: BN folded into the convs + NHWC, in fp32 and with bf16 autocast.
    rise_fused = RISE(model, **rise_opts, fuse=True, channels_last=True)
    rise_fast = RISE(model, **rise_opts, fuse=True, channels_last=True, amp=True)
    rise_compiled = RISE(model, **rise_opts, fuse=True, channels_last=True, amp=True, compile=True)
    # int8 static quantization (CPU only): calibrated on the first pair it explains, kept after that.
    # The int8 forward has its own fastest batch; it gets a row at the shared batch and one at its own.
    rise_int8 = rise_int8_best = None
    if dev.type == "cpu":
        rise_int8 = RISE(model, **rise_opts, channels_last=True, quantize=True)
        bs_int8 = best_batch_size(model, pairs[0][0], channels_last=True, quantize=True)
        if bs_int8 == bs:  # the same measurement twice otherwise
            log(f"RISE int8: its fastest batch is the shared one ({bs}), so it has one row")
        else:
            rise_int8_best = RISE(model, **{**rise_opts, "batch_size": bs_int8}, channels_last=True, quantize=True)
    # Sliding window and LIME with the same fast forward (fuse + NHWC + bf16), against the peers in fp32.
    fast = {"fuse": True, "channels_last": True, "amp": True}
    sw_fast = SlidingWindow(model, batch_size=bs, seed=args.seed, **fast)
    lime_fast = LIME(model, n_samples=args.n_samples, batch_size=bs, seed=args.seed, **fast)
    for ex in (rise_amp, rise_fused, rise_fast, sw_fast, rise_int8, rise_int8_best):
        if ex is not None:
            ex.explain(pairs[0][0], pairs[0][1])  # warm-up (and rise_int8's calibration)
    _, t_compile = timed(rise_compiled.explain, pairs[0][0], pairs[0][1])
    log(f"RISE compile=True: first map {t_compile:.1f} s (torch.compile of the forward, once per batch shape)")
    # Our 25 x 25 windows of 32 px, stride 4, hang 8 px over the border: Captum's (no overhang) match
    # them exactly on the image padded by 8 px of the substrate.
    size = pairs[0][0].shape[-1]
    window = max(1, round(size * sw.window))
    stride = round(size * sw.stride)
    starts = window_positions(size, window, sw.windows_per_side, size * sw.stride).tolist()
    pad = max(0, -int(starts[0]))
    exact = all(s + pad == i * stride for i, s in enumerate(starts)) and starts[-1] + window - size == pad
    if not exact:
        log(f"note: at {size} px our windows are not on a regular {stride} px grid; Captum uses the closest one")
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, ours: float, theirs: float, corr: float, corr_coverage: float = float("nan")) -> None:
        row = rows.setdefault(name, {"ours_s": [], "theirs_s": [], "correlation": [], "correlation_coverage": []})
        row["ours_s"].append(ours)
        row["theirs_s"].append(theirs)
        row["correlation"].append(corr)
        row["correlation_coverage"].append(corr_coverage)

    # Warm-up of the peers (imports, first-call overheads) on pair 0 with small sizes.
    q0, r0 = pairs[0][0].to(dev), pairs[0][1].to(dev)
    f0 = SimilarityToReference(model, Embedder(model)(r0[None])[0]).eval()
    if versions["captum"]:
        captum_lime(f0, q0, lime_segments[0], bs, lime.kernel_width, lime.alpha, bs, args.seed)
    if versions["torchray"]:
        torchray_rise(f0, q0, bs, args.grid, args.p, bs, args.seed)
    occ_ppe_best = None
    int8_corr: list[float] = []
    for i, (q_cpu, r_cpu, _, _) in enumerate(pairs):
        q, r = q_cpu.to(dev), r_cpu.to(dev)
        r_emb = Embedder(model)(r[None])[0]
        f = SimilarityToReference(model, r_emb).eval()
        f_padded = SimilarityToReference(model, r_emb, crop=pad).eval()
        ours_sw, t_sw = timed(sw.explain, q, r)
        ours_rise, t_rise = timed(rise.explain, q, r)
        seg = lime_segments[i]
        ours_lime, t_lime = timed(lime.explain, q, r, segments=seg)
        ours_sw, ours_rise, ours_lime = ours_sw.query_map, ours_rise.query_map, ours_lime.query_map
        if versions["captum"]:
            if occ_ppe_best is None:  # Captum's best perturbations_per_eval on this machine, found on pair 0
                sweep = {}
                for ppe in sorted({32, 64, 128, 256, 625, bs}):
                    _, sweep[ppe] = timed(captum_occlusion, f_padded, q, window, stride, pad, ppe)
                occ_ppe_best = min(sweep, key=sweep.get)
                log("Captum Occlusion s by perturbations_per_eval: "
                    + ", ".join(f"{k}: {v:.2f}" for k, v in sweep.items()) + f" -> best {occ_ppe_best}")
            theirs, t = timed(captum_occlusion, f_padded, q, window, stride, pad, 1)
            add("sliding_window vs Captum Occlusion (default perturbations_per_eval=1)", t_sw, t,
                pearson(ours_sw, theirs.cpu()))
            theirs, t = timed(captum_occlusion, f_padded, q, window, stride, pad, occ_ppe_best)
            add(f"sliding_window vs Captum Occlusion (best perturbations_per_eval={occ_ppe_best})", t_sw, t,
                pearson(ours_sw, theirs.cpu()))
            theirs, t = timed(captum_lime, f, q, seg, args.n_samples, lime.kernel_width, lime.alpha, bs, args.seed)
            add(f"LIME vs Captum Lime (perturbations_per_eval={bs})", t_lime, t, pearson(ours_lime, theirs.cpu()))
            theirs, t = timed(captum_lime, f, q, seg, args.n_samples, lime.kernel_width, lime.alpha, 1, args.seed)
            add("LIME vs Captum Lime (default perturbations_per_eval=1)", t_lime, t, pearson(ours_lime, theirs.cpu()))
            # The fast forward against the peers' rows just measured (their best / default settings).
            ours_x, t_x = timed(sw_fast.explain, q, r)
            for name in [k for k in rows if k.startswith("sliding_window vs")]:
                add(name.replace("sliding_window", "sliding_window fast", 1), t_x, rows[name]["theirs_s"][-1],
                    pearson(ours_x.query_map, ours_sw))
            ours_x, t_x = timed(lime_fast.explain, q, r, segments=seg)
            for name in [k for k in rows if k.startswith("LIME vs")]:
                add(name.replace("LIME", "LIME fast", 1), t_x, rows[name]["theirs_s"][-1],
                    pearson(ours_x.query_map, ours_lime))
        if versions["torchray"]:
            theirs, t = timed(torchray_rise, f, q, args.n_masks, args.grid, args.p, bs, args.seed)
            coverage = torchray_coverage(q, args.n_masks, args.grid, args.p, bs, args.seed)
            corr_cov = pearson(ours_rise, (theirs / coverage.clamp_min(1e-6)).cpu())
            add(f"RISE vs TorchRay rise (batch {bs})", t_rise, t, pearson(ours_rise, theirs.cpu()), corr_cov)
            theirs_cov = (theirs / coverage.clamp_min(1e-6)).cpu()
            for label, ex in (("RISE bf16 autocast (amp=True)", rise_amp),
                              ("RISE fused+channels_last fp32", rise_fused),
                              ("RISE fast (fuse+channels_last+amp)", rise_fast),
                              ("RISE fast+compile (compile=True)", rise_compiled),
                              ("RISE int8 (quantize=True, NHWC)", rise_int8),
                              ("RISE int8 at its own best batch", rise_int8_best)):
                if ex is None:
                    continue
                ours_x, t_x = timed(ex.explain, q, r)
                if ex.embedder.quantize:  # int8 changes the function a little: how far from our fp32 map
                    int8_corr.append(pearson(ours_x.query_map, ours_rise))
                theirs_bs = bs if ex.embedder.batch_size == bs else f"{bs}, ours {ex.embedder.batch_size}"
                add(f"{label} vs TorchRay rise fp32 (batch {theirs_bs})", t_x, t,
                    pearson(ours_x.query_map, theirs.cpu()), pearson(ours_x.query_map, theirs_cov))
            if dev.type == "cpu":  # the served CPU profile: a fresh int8 copy calibrated on each request's pair,
                # NHWC, at the handler's forward batch (what `sane archive --profile cpu` serves)
                served_bs = ServingConfig.from_model_yaml(profile_config("cpu", workers=1)).batch_size
                served = RISE(model, **{**rise_opts, "batch_size": served_bs}, channels_last=True, quantize=True)
                ours_x, t_x = timed(served.explain, q, r)
                add(f"RISE int8 per pair, batch {served_bs} (served CPU profile) vs TorchRay rise fp32 (batch {bs})",
                    t_x, t,
                    pearson(ours_x.query_map, theirs.cpu()), pearson(ours_x.query_map, theirs_cov))
            # Same comparison with TorchRay handed the same optimised forward (our fused NHWC model under
            # bf16 autocast): what is left is the difference between the two RISE implementations.
            f_fast = Autocast(SimilarityToReference(rise_fast.model, r_emb)).eval()
            theirs_fast, t_theirs_fast = timed(torchray_rise, f_fast, q, args.n_masks, args.grid, args.p, bs, args.seed)
            ours_x, t_x = timed(rise_fast.explain, q, r)
            add(f"RISE fast vs TorchRay rise on the same fast forward (batch {bs})", t_x, t_theirs_fast,
                pearson(ours_x.query_map, theirs_fast.cpu()), pearson(ours_x.query_map, theirs_cov))
            # TorchRay has no both-images mode; the paper's way re-runs the N query masks for each of the
            # 30 masked references, i.e. 30 x its fixed-reference cost (extrapolated, not measured).
            _, t_both = timed(rise.explain, q, r, mode="both")
            add(f"RISE both vs {args.reference_masks} x TorchRay rise (extrapolated from its fixed time)", t_both,
                args.reference_masks * t, float("nan"))
        log(f"peer pair {i + 1}/{len(pairs)} done")

    log("")
    log(f"Peers on {len(pairs)} pairs, same model and settings (medians; ratio < 1: ours faster)")
    log(f"{'comparison':<76}{'ours s':>8}{'theirs s':>9}{'ours/theirs':>12}{'corr':>7}{'corr/cov':>9}")
    out = {"versions": versions, "captum_occlusion_exact_windows": exact, "rows": {}}
    for name, row in rows.items():
        o, t = statistics.median(row["ours_s"]), statistics.median(row["theirs_s"])
        c, cc = float(np.mean(row["correlation"])), float(np.mean(row["correlation_coverage"]))
        out["rows"][name] = {"ours_seconds": o, "theirs_seconds": t, "ratio": o / t, "correlation": c,
                             "correlation_coverage_normalised": cc, **row}
        log(f"{name:<76}{o:>8.2f}{t:>9.2f}{o / t:>12.2f}{c:>7.3f}{cc:>9.3f}")
    if int8_corr:
        out["int8_correlation_to_fp32"] = float(np.mean(int8_corr))
        log(f"RISE int8 maps vs our fp32 maps: Pearson {np.mean(int8_corr):.4f} (mean, min {min(int8_corr):.4f})")
    log("corr: Pearson over pixels, mean over pairs. corr/cov (TorchRay only): its map divided by its own masks'")
    log("coverage, as ours is (SPEC 1.2) - the raw TorchRay map carries the coverage noise of its N masks.")
    for name, version in versions.items():
        if version is None:
            log(f"{name}: unavailable, its rows are missing")
    targets = [
        ("RISE vs TorchRay rise (batch", 1 / 3, "our RISE >= 3x faster than TorchRay's at equal N (both fp32)"),
        ("RISE bf16", 1 / 3, "our RISE >= 3x faster than TorchRay's at equal N (ours bf16)"),
        ("RISE fast (fuse", 1 / 3, "our RISE >= 3x faster than TorchRay's at equal N (ours fuse+NHWC+bf16)"),
        ("RISE fast+compile", 1 / 3, "our RISE >= 3x faster than TorchRay's at equal N (ours fast + compile)"),
        ("RISE int8 (", 1 / 3, "our RISE >= 3x faster than TorchRay's at equal N (ours int8, CPU)"),
        # When int8's fastest batch is the shared one, its single row answers both int8 targets.
        ("RISE int8 at" if rise_int8_best is not None else "RISE int8 (", 1 / 3,
         "our RISE >= 3x faster than TorchRay's at equal N (ours int8 at its best batch)"),
        ("sliding_window vs Captum Occlusion (default", 1 / 3, "sliding window >= 3x faster than Captum Occlusion "
                                                               "(default)"),
        ("sliding_window vs Captum Occlusion (best", 1.0, "sliding window no slower than Captum Occlusion at its best"),
        ("sliding_window fast vs Captum Occlusion (default", 1 / 3, "sliding window >= 3x faster than Captum "
                                                                    "Occlusion (default; ours fast)"),
        ("sliding_window fast vs Captum Occlusion (best", 1.0, "sliding window no slower than Captum Occlusion at "
                                                               "its best (ours fast)"),
        (f"LIME vs Captum Lime (perturbations_per_eval={bs})", 1.0, "LIME no slower than Captum Lime at equal samples"),
        (f"LIME fast vs Captum Lime (perturbations_per_eval={bs})", 1.0, "LIME no slower than Captum Lime at equal "
                                                                         "samples (ours fast)"),
    ]
    log("")
    for needle, limit, text in targets:
        match = [k for k in out["rows"] if k.startswith(needle)]
        if not match:
            log(f"target  {text}: not measured (peer unavailable)")
            continue
        ratio = out["rows"][match[0]]["ratio"]
        verdict = "met" if ratio <= limit else "MISSED"
        log(f"target  {text}: ratio {ratio:.2f} (needs <= {limit:.2f}) -> {verdict}")
        out["rows"][match[0]]["target"] = {"limit": limit, "met": ratio <= limit}
    return out


if __name__ == "__main__":
    main()
