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
import multiprocessing as mp
import queue
import re
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from k_references import distinct_references  # bench/ is on sys.path when this script runs

from sane.images import load_image
from sane.metrics import pearson
from sane.serving.ops.archive import profile_config
from sane.serving.ops.http_client import HttpClient
from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.ops.server import temporary_server
from sane.serving.worker.encoding import decode_npy

ROOT = Path(__file__).resolve().parents[1]
FAILURES: list[str] = []
CPU_MAP: list[np.ndarray] = []  # step 1's CPU map, for step 2


def check(name: str, ok: bool, detail: str) -> None:
    print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


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


def _profile(name: str, fn) -> None:
    """Where one explanation's time goes: the top operators by GPU time, and GPU-busy vs wall time."""
    from torch.profiler import ProfilerActivity, profile

    try:
        _print_profile(name, fn, profile, ProfilerActivity)
    except Exception:  # noqa: BLE001 - the profile explains a number; its failure must not lose the others
        traceback.print_exc(file=sys.stdout)


def _print_profile(name: str, fn, profile, activity) -> None:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[activity.CPU, activity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    wall = 1000 * (time.perf_counter() - t)
    events = prof.key_averages()
    print(f"    profile of {name}: {wall:.1f} ms wall, profiled (the GPU's own time: 'Self CUDA time total' below)")
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            print(events.table(sort_by=key, row_limit=8, max_name_column_width=40))
            break
        except (AttributeError, KeyError, ValueError):
            continue


def _variant_ms(model, n_masks: int, device: str, kwargs: dict, dtype, q, r, made: dict, label: str) -> float:
    """Milliseconds per map of one precision/batch/compile variant; NaN (with the error printed) where
    the variant fails on this machine, so the other rows still come."""
    import torch._inductor.config as inductor

    from sane.saliency import RISE

    kwargs = dict(kwargs)
    cudagraphs = kwargs.pop("_cudagraphs", False)
    benchmark = kwargs.pop("_cudnn_benchmark", False)
    try:
        inductor.triton.cudagraphs = cudagraphs  # read when the first batch compiles (inside _ms)
        torch.backends.cudnn.benchmark = benchmark
        gen = RISE(model, n_masks=n_masks, device=device, **kwargs)
        gen.embedder.amp_dtype = dtype
        ms = _ms(lambda: gen.explain(q, r))
        if not cudagraphs and not benchmark:  # profiled later under the default settings
            made[label] = gen
        return ms
    except Exception as error:  # noqa: BLE001 - one failed variant must not lose the others
        print(f"    variant {kwargs} {dtype}{' CUDA graphs' if cudagraphs else ''} failed: "
              f"{type(error).__name__}: {str(error)[:300]}")
        return float("nan")
    finally:
        inductor.triton.cudagraphs = False
        torch.backends.cudnn.benchmark = False


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
            fast = {"amp": True, "channels_last": True}
            variants = {  # name: (RISE keyword arguments, autocast dtype)
                "bf16": ({**fast, "batch_size": 250}, torch.bfloat16),
                "fp16": ({**fast, "batch_size": 250}, torch.float16),
                "fp16 compiled": ({**fast, "batch_size": 250, "compile": True}, torch.float16),
                f"fp16 batch {n_masks}": ({**fast, "batch_size": n_masks}, torch.float16),
                f"fp16 batch {n_masks} compiled": ({**fast, "batch_size": n_masks, "compile": True}, torch.float16),
                f"fp16 batch {n_masks} BN folded": ({**fast, "batch_size": n_masks, "fuse": True}, torch.float16),
                f"fp16 batch {n_masks} BN folded, compiled": (
                    {**fast, "batch_size": n_masks, "fuse": True, "compile": True}, torch.float16),
                f"fp16 batch {n_masks} compiled+CUDA graphs": (
                    {**fast, "batch_size": n_masks, "compile": True, "_cudagraphs": True}, torch.float16),
                f"fp16 batch {n_masks} compiled+cudnn.benchmark": (
                    {**fast, "batch_size": n_masks, "compile": True, "_cudnn_benchmark": True}, torch.float16),
            }
            made: dict = {}
            for label, (kwargs, dtype) in variants.items():
                row[label] = _variant_ms(model, n_masks, device, kwargs, dtype, q, r, made, label)
            profiled = RISE(model, n_masks=n_masks, batch_size=250, device=device, **fast)
            _profile(f"{name}, fp16, batches of 250", lambda g=profiled, q=q, r=r: g.explain(q, r))
            best = min((k for k in made if row[k] == row[k]), key=row.get, default=None)
            if best is not None:
                _profile(f"{name}, {best}", lambda g=made[best], q=q, r=r: g.explain(q, r))
        target = 5.0 if size == 112 else 60.0
        done = {k: v for k, v in row.items() if v == v}  # NaN: the variant failed (printed above)
        print("    ms per map: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items())
              + f" (target on an H100/H200 <= {target:g} ms at 2000 masks; best {min(done.values()):.1f}"
              + f" = {min(done, key=done.get)})")
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
    one = _ms(lambda: run_batch(handler, context, [payload("json", qb, rb, options)]), 5)
    refs = distinct_references(rb, 10)  # ten different images, as a retrieval answer's results are
    ten = _ms(lambda: run_batch(handler, context, [payload("json", qb, refs, options)]), 5)
    ratio = f"served K=10 / K=1 {ten / one:.3f} ({ten:.1f} vs {one:.1f} ms)"
    if device == "cpu":  # the smoke run's few masks: decoding and embedding ten references dominate
        print(f"  K=10 references (not checked on the CPU at {n_masks} masks): {ratio}")
    else:
        check("K=10 references cost about one explanation", ten / one <= 1.15, ratio)
    if device != "cpu":  # where a K=10 request's extra time goes (the worker's CPU side)
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.runcall(lambda: [run_batch(handler, context, [payload("json", qb, refs, options)]) for _ in range(5)])
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
        print("    cProfile of 5 K=10 requests, by own time:\n" + "\n".join(
            line for line in out.getvalue().splitlines() if line.strip())[-2500:])


def torchserve_available() -> bool:
    """TorchServe's Java frontend and a Java runtime are both here (a bare GPU machine may have neither)."""
    try:
        import ts
    except ImportError:
        return False
    return shutil.which("java") is not None and (Path(ts.__file__).parent / "frontend" / "model-server.jar").exists()


def served(args, gpus: int, cpu_map: np.ndarray) -> None:
    """Step 2: the archive's profile served by ``workers`` workers, their devices counted, then
    ``--requests`` concurrent requests, each answer compared with the CPU map; the throughput."""
    workers = max(gpus, 1) * args.workers_per_gpu
    mode = args.served if args.served != "auto" else ("torchserve" if torchserve_available() else "processes")
    print(f"\n2. served: --profile {'cpu' if args.cpu else 'gpu'}, {workers} workers"
          + ("" if args.cpu else f" over {gpus} GPU(s)")
          + (", through TorchServe" if mode == "torchserve" else
             ", as handler worker processes (TorchServe's Java frontend is not installed here: each process runs "
             "the archive's handler with TorchServe's Python Context and its batching, gpu_id assigned "
             "round-robin as TorchServe does)"))
    profile = (profile_config("cpu", workers=workers, cores=workers) if args.cpu
               else profile_config("gpu", gpus, args.workers_per_gpu))
    profile = {**profile, "handler": {**profile["handler"], "max_n_masks": max(args.n_masks, 4000),
                                      "max_cost": max(args.n_masks, 4600)}}
    q, r = (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()
    options = {"method": "rise", "n_masks": args.n_masks, "seed": 0, "outputs": ["npy"]}
    run = _served_torchserve if mode == "torchserve" else _served_processes
    devices, answers, seconds = run(profile, workers, q, r, options, args.requests)
    counts = {d: devices.count(d) for d in sorted(set(devices))}
    expected = {"cpu": workers} if args.cpu else {f"cuda:{i}": args.workers_per_gpu for i in range(gpus)}
    check("workers spread over the GPUs", counts == expected, f"workers per device {counts}, expected {expected}")
    maps = [decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32) for status, body in answers
            if status == 200]
    worst = min((pearson(m, cpu_map) for m in maps), default=float("nan"))
    check("every served answer, close to the CPU map", len(maps) == args.requests and worst >= 0.99,
          f"{len(maps)}/{args.requests} answered 200, lowest Pearson {worst:.5f}")
    print(f"  served throughput: {args.requests / seconds:.2f} explanations/s ({args.n_masks} masks each, "
          f"{workers} workers)")


def _served_torchserve(profile: dict, workers: int, q: bytes, r: bytes, options: dict, n_requests: int
                       ) -> tuple[list[str], list, float]:
    """(each worker's device, the answers, seconds for all of them) through a real TorchServe."""
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
        client = HttpClient(server.inference_url, timeout=600)
        client.request("saliency", q, r, options)  # warm-up
        t = time.perf_counter()
        with ThreadPoolExecutor(min(n_requests, 2 * workers)) as pool:
            answers = list(pool.map(lambda _: client.request("saliency", q, r, options), range(n_requests)))
        return devices, answers, time.perf_counter() - t


def _worker(gpu_id: int | None, config: dict, requests, results) -> None:
    """One worker process: the handler initialised as TorchServe would (its ``gpu_id``), then batches
    gathered as the frontend does (up to ``batchSize`` requests, waiting at most ``maxBatchDelay`` ms)."""
    torch.set_num_threads(int(config["handler"].get("threads", 1)))
    handler, context = load_handler("saliency", config_overrides=config, gpu_id=gpu_id)
    results.put(("ready", str(handler.device)))
    batch_size, delay = int(config.get("batchSize", 1)), float(config.get("maxBatchDelay", 0)) / 1000
    while (item := requests.get()) is not None:
        batch, deadline = [item], time.monotonic() + delay
        while len(batch) < batch_size and (left := deadline - time.monotonic()) > 0:
            try:
                item = requests.get(timeout=left)
            except queue.Empty:
                break
            if item is None:  # stop after this batch
                requests.put(None)
                break
            batch.append(item)
        for (rid, _), answer in zip(batch, run_batch(handler, context, [p for _, p in batch])):
            results.put(("answer", rid, answer))


def _served_processes(profile: dict, workers: int, q: bytes, r: bytes, options: dict, n_requests: int
                       ) -> tuple[list[str], list, float]:
    """(each worker's device, the answers, seconds for all of them) from handler worker processes fed
    from one queue, as TorchServe's frontend feeds its workers."""
    ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    requests, results = ctx.Queue(), ctx.Queue()
    gpu_ids = [None if profile.get("deviceType") == "cpu" else profile["deviceIds"][i % len(profile["deviceIds"])]
               for i in range(workers)]
    procs = [ctx.Process(target=_worker, args=(g, profile, requests, results), daemon=True) for g in gpu_ids]
    for p in procs:
        p.start()
    try:
        devices = [results.get(timeout=300)[1] for _ in procs]

        def serve(batch: list[dict]) -> list:
            for i, p in enumerate(batch):
                requests.put((i, p))
            answers = dict(results.get(timeout=600)[1:] for _ in batch)
            return [answers[i] for i in range(len(batch))]

        one = payload("json", q, r, options)
        serve([one] * (2 * workers))  # warm-up: every worker's first batches
        t = time.perf_counter()
        answers = serve([one] * n_requests)
        return devices, answers, time.perf_counter() - t
    finally:
        for _ in procs:
            requests.put(None)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def step(name: str, fn, *args) -> None:
    """Run one step; an exception is a FAIL of that step (with its traceback), not the end of the run,
    so one broken step still leaves the others' numbers."""
    t = time.time()
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - reported as a failure, the run goes on
        traceback.print_exc(file=sys.stdout)
        check(name, False, "raised (traceback above)")
    print(f"  ({name}: {time.time() - t:.0f} s)", flush=True)


def maps_vs_cpu(args, device: str) -> np.ndarray:
    """Step 1; returns the CPU map the served answers are compared with."""
    print(f"\n1. maps on {device} vs CPU (RISE, {args.n_masks} masks, example pair)")
    cpu_map, cpu_s = explain_in_process("cpu", False, args.n_masks)
    CPU_MAP.append(cpu_map)
    fp32_map, fp32_s = explain_in_process(device, False, args.n_masks)
    amp_map, amp_s = explain_in_process(device, True, args.n_masks)
    diff = float(np.abs(fp32_map - cpu_map).max())
    check("fp32 map equals the CPU map", pearson(fp32_map, cpu_map) >= 0.9999 and diff <= 1e-3,
          f"Pearson {pearson(fp32_map, cpu_map):.6f}, max |diff| {diff:.2e}")
    check("amp map close to the CPU map", pearson(amp_map, cpu_map) >= 0.99,
          f"Pearson {pearson(amp_map, cpu_map):.5f}, max |diff| {float(np.abs(amp_map - cpu_map).max()):.2e}")
    print(f"  ms per {args.n_masks}-mask explanation (compact model, 112 px, handler end to end): CPU "
          f"{1000 * cpu_s:.1f}, {device} fp32 {1000 * fp32_s:.1f}, amp {1000 * amp_s:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers-per-gpu", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--n-masks", type=int, default=2000)
    parser.add_argument("--cpu", action="store_true", help="smoke-test the script on the CPU (no GPU checks)")
    parser.add_argument("--served", choices=("auto", "torchserve", "processes"), default="auto",
                        help="step 2 through TorchServe, or through handler worker processes (auto: TorchServe "
                             "where its frontend and Java are installed)")
    parser.add_argument("--steps", default="1,2,4", help="the steps to run, e.g. 1,2 (step 2 needs step 1's map)")
    args = parser.parse_args()
    steps = {part.strip() for part in args.steps.split(",")}

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

    if steps & {"1", "2"}:
        step("1. maps vs CPU", maps_vs_cpu, args, device)
    if "2" in steps and CPU_MAP:
        step("2. served", served, args, gpus, CPU_MAP[0])
    if "4" in steps:
        step("4. the library", library_speed, device, args.n_masks if not args.cpu else 64)

    print(f"\n{'all checks passed' if not FAILURES else 'FAILED: ' + ', '.join(FAILURES)} "
          f"in {time.time() - start:.0f} s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
