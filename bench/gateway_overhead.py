"""What the gateway costs: explanations/s and latency through HAProxy vs straight to one instance.

Starts its own deployments (`sane deploy up` with free ports, the `saliency` archive, the per-key rate
limit lifted) with 1 and then 2 TorchServe instances, and in interleaved rounds (so machine noise hits
every variant alike) sends the same requests from --concurrency clients:
  direct   to instance i0's own HTTP or gRPC port (no key: the instance has no auth of its own)
  gateway  to the gateway's port with a key, balanced over the instances
over HTTP (multipart) and gRPC. Every request has its own query image. Prints explanations/s, p50
and p99 per variant and the ratio gateway / direct (target: the gateway costs at most 5 %, >= 0.95,
with one instance; with two, the ratio also shows what a second instance adds on this machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from serve_throughput import percentile, query_variants, run_clients

from sane.serving.ops import deploy
from sane.serving.ops.grpc_client import GrpcClient
from sane.serving.ops.http_client import HttpClient
from sane.serving.ops.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def measure(dep: deploy.Deployment, key: str, requests, options, args, stubs: Path) -> dict[str, tuple]:
    state = dep.read()
    i0 = state["instances"][0]["ports"]
    url, grpc_address = dep.urls(state)
    targets = {
        ("http", "direct"): HttpClient(f"http://127.0.0.1:{i0['http']}", timeout=600),
        ("http", "gateway"): HttpClient(url, key, timeout=600),
        ("grpc", "direct"): GrpcClient(f"127.0.0.1:{i0['grpc']}", stubs_dir=stubs, timeout=600),
        ("grpc", "gateway"): GrpcClient(grpc_address, key, stubs_dir=stubs, timeout=600),
    }

    def sender(client):
        def send(q, r):
            if isinstance(client, HttpClient):
                status, body = client.request("saliency", q, r, options)
                assert status == 200, body
            else:
                assert "error" not in client.request("saliency", q, r, options)
        return send

    for client in targets.values():  # warm-up: connections, mask banks, allocator
        run_clients(sender(client), requests[: args.concurrency], args.concurrency)
    rates = {name: [] for name in targets}
    latencies = {name: [] for name in targets}
    for round_ in range(args.rounds):
        for name, client in targets.items():
            seconds, lat = run_clients(sender(client), requests, args.concurrency)
            rates[name].append(len(requests) / seconds)
            latencies[name] += lat
            print(f"  {len(state['instances'])} instance(s) round {round_ + 1} {name[0]:<5}{name[1]:<8} "
                  f"{len(requests) / seconds:6.2f} explanations/s", flush=True)
    for client in targets.values():
        if isinstance(client, GrpcClient):
            client.close()
    return {name: (statistics.median(rates[name]), percentile(latencies[name], 50), percentile(latencies[name], 99))
            for name in targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16, help="requests per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-masks", type=int, default=300)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    options = {"method": "rise", "mode": "fixed", "n_masks": args.n_masks, "seed": 0}
    reference = (ROOT / "examples" / "reference.jpg").read_bytes()
    requests = [(q, reference) for q in query_variants(args.requests)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="sane-bench-gateway-") as tmp:
        from sane.serving.ops.archive import build_archive

        store = Path(tmp) / "store"
        build_archive("saliency", store)
        for n in args.instances:
            out = Path(tmp) / f"deploy{n}"
            print(f"starting {n} instance(s) behind the gateway ...", flush=True)
            dep = deploy.up(n, out, free_port(), free_port(), ["gateway.rate_limit=1000000"], model_store=store,
                            models=["saliency"], config=ROOT / "config.properties")
            try:
                key = dep.keys.add("bench", dep.socket)
                results[n] = measure(dep, key, requests, options, args, Path(tmp) / "stubs")
            finally:
                deploy.down(out, drain_timeout=5)

    print(f"\nsaliency archive, rise n_masks={args.n_masks}, {args.requests} requests x {args.rounds} rounds, "
          f"concurrency {args.concurrency} (medians over rounds)")
    print(f"{'instances':<10}{'protocol':<9}{'path':<9}{'expl/s':>8}{'p50 s':>8}{'p99 s':>8}{'gateway/direct':>16}")
    for n, table in results.items():
        for (protocol, path), (rate, p50, p99) in table.items():
            ratio = f"{rate / table[(protocol, 'direct')][0]:.3f}" if path == "gateway" else ""
            print(f"{n:<10}{protocol:<9}{path:<9}{rate:8.2f}{p50:8.2f}{p99:8.2f}{ratio:>16}")
    print("(direct = one instance's own port; target gateway/direct >= 0.95 with one instance)")


if __name__ == "__main__":
    main()
