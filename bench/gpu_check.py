"""The GPU check: one prepared script (under 8 minutes) for a machine with CUDA GPUs.

1. Maps on GPU equal maps on CPU: the `saliency` handler (in process, the served code) explains the
   example pair with RISE on cuda:0 in fp32 and with amp (fp16), and on the CPU in fp32; it prints the
   largest difference and the Pearson correlation of each GPU map to the CPU one. Tolerances: fp32
   Pearson >= 0.9999 and max |diff| <= 1e-3 (the same masks, float rounding only); amp Pearson >= 0.99.
2. Workers spread over the GPUs: a `saliency` archive built with `--profile gpu --gpus N
   --workers-per-gpu K` (N = every GPU here, K = --workers-per-gpu) served by TorchServe; each worker
   logs the device it pinned itself to, and the script counts K workers on each of the N GPUs. Then
   --requests concurrent requests over HTTP, every answer's map compared with the CPU map (amp
   tolerance: the GPU profile turns amp on).
3. Speed: ms per 2000-mask RISE explanation (compact model, 112 px) on cuda:0, fp32 and amp, and the
   served throughput of step 2.
4. The library on cuda:0: RISE's overhead over its N bare forward passes; ms per N-mask explanation
   for the compact model at 112 px and ResNet-50 (random weights) at 224 px in fp32, bf16, fp16 and
   fp16 compiled (targets on an H100/H200: <= 5 ms and <= 60 ms); n_masks="auto" vs fixed N (masks
   used, ms); and a served request with K=10 references against K=1 (in-process handler, target <= 1.15).
Prints PASS/FAIL per check and exits 1 on a failure. `--cpu` runs every step on the CPU (a smoke test
of the script itself, for machines without a GPU: the device checks then say nothing about GPUs).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from sane.images import load_image
from sane.serving.ops.archive import profile_config
from sane.serving.ops.http_client import HttpClient
from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.ops.server import temporary_server
from sane.serving.worker.encoding import decode_npy

ROOT = Path(__file__).resolve().parents[1]
FAILURES: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def explain_in_process(device: str, amp: bool, n_masks: int) -> tuple[np.ndarray, float]:
    """The query map of the example pair from the saliency handler on ``device``; seconds per request
    (median of 3 after a warm-up)."""
    q, r = (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()
    handler, context = load_handler("saliency", config_overrides={"handler": {
        "device": device, "amp": amp, "max_n_masks": max(n_masks, 4000), "max_cost": max(n_masks, 4600)}})
    options = {"method": "rise", "n_masks": n_masks, "seed": 0, "outputs": ["npy"]}
    times, body = [], None
    for _ in range(4):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        [(status, body)] = run_batch(handler, context, [payload("json", q, r, options)])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        assert status == 200, body
    return decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32), float(np.median(times[1:]))


def _ms(fn, repeats: int = 5) -> float:
    """Median milliseconds of ``fn()`` after one warm-up call (mask banks, compiles, allocator)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def library_speed(device: str, n_masks: int) -> None:
    """Step 4: the engine's overhead, the precision matrix, adaptive vs fixed, K=10 served vs K=1."""
    from sane.models import build_embedding, load_similarity
    from sane.saliency import RISE

    print(f"\n4. the library on {device} ({n_masks} masks)")
    compact, preprocess = load_similarity(device=device)
    torch.manual_seed(0)
    resnet = build_embedding("resnet50", dim=128).eval().to(device)
    models = {"compact 112 px": (compact, 112), "resnet50 224 px": (resnet, 224)}
    gen = torch.Generator().manual_seed(0)
    for name, (model, size) in models.items():
        q, r = (torch.randn((3, size, size), generator=gen).to(device) for _ in range(2))
        fp32 = RISE(model, n_masks=n_masks, batch_size=250, device=device)
        x = torch.randn((min(250, n_masks), 3, size, size), generator=gen).to(device)

        def bare(model=model, x=x):  # the N forward passes RISE makes, in its batches of 250
            with torch.inference_mode():
                for start in range(0, n_masks, 250):
                    model(x[: min(250, n_masks - start)])

        explain_ms, bare_ms = _ms(lambda g=fp32, q=q, r=r: g.explain(q, r)), _ms(bare)
        print(f"  {name}: RISE / bare forwards {explain_ms / bare_ms:.3f} ({explain_ms:.1f} vs {bare_ms:.1f} ms)")
        row = {"fp32": explain_ms}
        if device != "cpu":
            bf16 = RISE(model, n_masks=n_masks, batch_size=250, device=device, amp=True, channels_last=True)
            bf16.embedder.amp_dtype = torch.bfloat16
            row["bf16"] = _ms(lambda g=bf16, q=q, r=r: g.explain(q, r))
            fp16 = RISE(model, n_masks=n_masks, batch_size=250, device=device, amp=True, channels_last=True)
            row["fp16"] = _ms(lambda g=fp16, q=q, r=r: g.explain(q, r))
            compiled = RISE(model, n_masks=n_masks, batch_size=250, device=device, amp=True, channels_last=True,
                            compile=True)
            row["fp16 compiled"] = _ms(lambda g=compiled, q=q, r=r: g.explain(q, r))
        target = 5.0 if size == 112 else 60.0
        print("    ms per map: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items())
              + f" (target on an H100/H200 <= {target:g} ms at 2000 masks; best {min(row.values()):.1f})")
    model = compact
    q, r = (load_image(ROOT / "examples" / name, preprocess).to(device) for name in ("query.jpg", "reference.jpg"))
    fixed = RISE(model, n_masks=n_masks, batch_size=250, device=device)
    auto = RISE(model, n_masks="auto", max_masks=n_masks, device=device, batch_size=250)
    used = auto.explain(q, r).n_masks_used
    print(f"  adaptive: {used} of {n_masks} masks, {_ms(lambda: auto.explain(q, r)):.1f} ms vs fixed "
          f"{_ms(lambda: fixed.explain(q, r)):.1f} ms")
    handler, context = load_handler("saliency", config_overrides={"handler": {
        "device": device, "batch_size": 250, "max_n_masks": max(n_masks, 4000), "max_cost": max(n_masks, 4600)}})
    qb, rb = (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()
    options = {"n_masks": n_masks, "outputs": ["npy"]}
    one = _ms(lambda: run_batch(handler, context, [payload("json", qb, rb, options)]), 3)
    ten = _ms(lambda: run_batch(handler, context, [payload("json", qb, [rb] * 10, options)]), 3)
    check("K=10 references cost about one explanation", ten / one <= 1.15,
          f"served K=10 / K=1 {ten / one:.3f} ({ten:.1f} vs {one:.1f} ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers-per-gpu", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--n-masks", type=int, default=2000)
    parser.add_argument("--cpu", action="store_true", help="smoke-test the script on the CPU (no GPU checks)")
    args = parser.parse_args()

    start = time.time()
    print(time.strftime("gpu_check %Y-%m-%d %H:%M UTC", time.gmtime()))
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (run with --cpu for a smoke test of the script)")
        return 2
    gpus = 0 if args.cpu else torch.cuda.device_count()
    for i in range(gpus):
        print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
    device = "cpu" if args.cpu else "cuda:0"

    print(f"\n1. maps on {device} vs CPU (RISE, {args.n_masks} masks, example pair)")
    cpu_map, cpu_s = explain_in_process("cpu", False, args.n_masks)
    fp32_map, fp32_s = explain_in_process(device, False, args.n_masks)
    amp_map, amp_s = explain_in_process(device, True, args.n_masks)
    diff = float(np.abs(fp32_map - cpu_map).max())
    check("fp32 map equals the CPU map", pearson(fp32_map, cpu_map) >= 0.9999 and diff <= 1e-3,
          f"Pearson {pearson(fp32_map, cpu_map):.6f}, max |diff| {diff:.2e}")
    check("amp map close to the CPU map", pearson(amp_map, cpu_map) >= 0.99,
          f"Pearson {pearson(amp_map, cpu_map):.5f}, max |diff| {float(np.abs(amp_map - cpu_map).max()):.2e}")
    print(f"  ms per {args.n_masks}-mask explanation (compact model, 112 px, handler end to end): CPU "
          f"{1000 * cpu_s:.1f}, {device} fp32 {1000 * fp32_s:.1f}, amp {1000 * amp_s:.1f}")

    n_gpus = max(gpus, 1)
    workers = n_gpus * args.workers_per_gpu
    print(f"\n2. served: --profile {'cpu' if args.cpu else 'gpu'}, {workers} workers"
          + ("" if args.cpu else f" over {gpus} GPU(s)"))
    profile = (profile_config("cpu", workers=workers, cores=workers) if args.cpu
               else profile_config("gpu", gpus, args.workers_per_gpu))
    profile = {**profile, "handler": {**profile["handler"], "max_n_masks": max(args.n_masks, 4000),
                                      "max_cost": max(args.n_masks, 4600)}}
    q, r = (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()
    options = {"method": "rise", "n_masks": args.n_masks, "seed": 0, "outputs": ["npy"]}
    with tempfile.TemporaryDirectory(prefix="sane-gpu-check-") as tmp, \
            temporary_server(tmp, ["saliency"], ROOT / "config.properties", profile, timeout=400) as server:
        deadline = time.time() + 120  # READY means one worker is up; the others may still be loading
        while True:
            log = "\n".join(p.read_text(errors="replace")
                            for p in (Path(server.workdir) / "logs").glob("model_log*.log"))
            devices = re.findall(r"saliency handler ready on (\w+(?::\d+)?)", log)
            if len(devices) >= workers or time.time() > deadline:
                break
            time.sleep(2)
        counts = {d: devices.count(d) for d in sorted(set(devices))}
        expected = {"cpu": workers} if args.cpu else {f"cuda:{i}": args.workers_per_gpu for i in range(gpus)}
        check("workers spread over the GPUs", counts == expected, f"workers per device {counts}, expected {expected}")
        client = HttpClient(server.inference_url, timeout=600)
        client.request("saliency", q, r, options)  # warm-up
        t = time.perf_counter()
        with ThreadPoolExecutor(min(args.requests, 2 * workers)) as pool:
            answers = list(pool.map(lambda _: client.request("saliency", q, r, options), range(args.requests)))
        seconds = time.perf_counter() - t
        maps = [decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32) for status, body in answers
                if status == 200]
        worst = min((pearson(m, cpu_map) for m in maps), default=float("nan"))
        check("every served answer, close to the CPU map", len(maps) == args.requests and worst >= 0.99,
              f"{len(maps)}/{args.requests} answered 200, lowest Pearson {worst:.5f}")
        print(f"  served throughput: {args.requests / seconds:.2f} explanations/s ({args.n_masks} masks each)")

    library_speed(device, args.n_masks if not args.cpu else 64)

    print(f"\n{'all checks passed' if not FAILURES else 'FAILED: ' + ', '.join(FAILURES)} "
          f"in {time.time() - start:.0f} s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
