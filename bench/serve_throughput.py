"""Served vs in-process throughput of the `saliency` archive on loopback.

Starts its own TorchServe (the test configuration: token auth off, loopback, free ports; the
archive's own model-config.yaml: batchSize 4, maxBatchDelay 50 ms) and stops it at the end. Then, in
interleaved rounds so that machine noise hits every variant alike:
  in-process  the same handler code (handlers/saliency_handler.py, a real ts Context) called
              directly on the same requests in batches of --concurrency (the batches the server forms
              when --concurrency clients keep it busy)
  http        --concurrency clients, each sending its share of the requests back to back (multipart)
  grpc        the same over TorchServe's gRPC Predictions RPC (stubs generated from its jar)
Every request has its own query image (no shared-query shortcut). Prints explanations/s, p50 and p99
latency per variant and the ratio served / in-process (target >= 0.85 at the default concurrency).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from sane.serving.ops.grpc_client import GrpcClient
from sane.serving.ops.http_client import HttpClient
from sane.serving.ops.inprocess import load_handler, payload, run_batch
from sane.serving.ops.server import temporary_server

ROOT = Path(__file__).resolve().parents[1]


def query_variants(n: int) -> list[bytes]:
    """``n`` distinct queries: the example query with a different random patch each."""
    base = np.asarray(Image.open(ROOT / "examples" / "query.jpg").convert("RGB"))
    out = []
    for i in range(n):
        arr = base.copy()
        arr[70:100, 70:100] = np.random.default_rng(i).integers(0, 255, (30, 30, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_clients(send, requests: list[tuple[bytes, bytes]], concurrency: int) -> tuple[float, list[float]]:
    """Wall seconds for all requests sent by ``concurrency`` clients, and each request's latency (s)."""
    shares = [requests[i::concurrency] for i in range(concurrency)]

    def client(share):
        latencies = []
        for q, r in share:
            start = time.perf_counter()
            send(q, r)
            latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [lat for result in pool.map(client, shares) for lat in result]
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=4, help="clients (default: the archive's batchSize)")
    parser.add_argument("--requests", type=int, default=16, help="requests per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-masks", type=int, default=300)
    parser.add_argument("--mode", default="fixed", choices=["fixed", "both"])
    parser.add_argument("--method", default="rise")
    args = parser.parse_args()

    options = {"method": args.method, "mode": args.mode, "n_masks": args.n_masks, "seed": 0}
    reference = (ROOT / "examples" / "reference.jpg").read_bytes()
    requests = [(q, reference) for q in query_variants(args.requests)]

    with tempfile.TemporaryDirectory(prefix="sane-bench-") as tmp:
        print("starting TorchServe (saliency archive) ...", flush=True)
        with temporary_server(tmp, ["saliency"], ROOT / "config.properties") as server:
            http = HttpClient(server.inference_url, timeout=600)
            grpc_client = GrpcClient(server.grpc_address, stubs_dir=Path(tmp) / "stubs", timeout=600)
            handler, context = load_handler("saliency")

            def send_http(q, r):
                status, body = http.request("saliency", q, r, options)
                assert status == 200, body

            def send_grpc(q, r):
                body = grpc_client.request("saliency", q, r, options)
                assert "error" not in body, body

            def inprocess() -> tuple[float, list[float]]:
                latencies = []
                start = time.perf_counter()
                for i in range(0, len(requests), args.concurrency):
                    batch = [payload("multipart", q, r, options) for q, r in requests[i : i + args.concurrency]]
                    t = time.perf_counter()
                    results = run_batch(handler, context, batch)
                    assert all(status == 200 for status, _ in results)
                    latencies += [time.perf_counter() - t] * len(batch)
                return time.perf_counter() - start, latencies

            variants = {
                "in-process": inprocess,
                "http": lambda: run_clients(send_http, requests, args.concurrency),
                "grpc": lambda: run_clients(send_grpc, requests, args.concurrency),
            }
            warm = requests[: args.concurrency]  # mask banks, allocator and JIT warm-up on both sides
            run_batch(handler, context, [payload("multipart", q, r, options) for q, r in warm])
            run_clients(send_http, warm, args.concurrency)
            rates: dict[str, list[float]] = {name: [] for name in variants}
            latencies: dict[str, list[float]] = {name: [] for name in variants}
            for round_ in range(args.rounds):
                for name, fn in variants.items():
                    seconds, lat = fn()
                    rates[name].append(len(requests) / seconds)
                    latencies[name] += lat
                    print(f"  round {round_ + 1} {name:<10} {len(requests) / seconds:6.2f} explanations/s", flush=True)
            grpc_client.close()

    base = statistics.median(rates["in-process"])
    print(f"\nsaliency archive, {args.method} mode={args.mode} n_masks={args.n_masks}, {args.requests} requests x "
          f"{args.rounds} rounds, concurrency {args.concurrency} (medians over rounds)")
    print(f"{'variant':<12}{'expl/s':>8}{'p50 s':>8}{'p99 s':>8}{'served/in-process':>19}")
    for name in variants:
        rate = statistics.median(rates[name])
        ratio = "" if name == "in-process" else f"{rate / base:.2f}"
        print(f"{name:<12}{rate:8.2f}{percentile(latencies[name], 50):8.2f}{percentile(latencies[name], 99):8.2f}"
              f"{ratio:>19}")
    print("(in-process latency = its batch's time; target served/in-process >= 0.85)")


if __name__ == "__main__":
    main()
