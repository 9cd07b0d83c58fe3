"""`sane deploy up|down|status|keys|drain|undrain|restart`: the command line of
:mod:`sane.serving.ops.deploy` (N TorchServe instances behind the HAProxy gateway)."""

from __future__ import annotations

import argparse
import json

from sane.serving.ops import gateway
from sane.serving.ops.deploy import (
    DEFAULT_OUT,
    DeployError,
    Deployment,
    down,
    drain,
    restart_rolling,
    status,
    undrain,
    up,
)


def print_status(report: dict) -> None:
    g = report["gateway"]
    print(f"deployment {report['out']}")
    print(f"  gateway  {'running' if g['running'] else 'STOPPED'}  HTTP {g['http']}  gRPC {g['grpc']}  "
          f"/healthz {g['healthz'] or '-'}  supervisor {'running' if report['supervisor'] else 'STOPPED'}  "
          f"keys {report['keys']}")
    print(f"  {'instance':<9}{'pid':>8}  {'desired':<11}{'gateway':<9}{'http':>5}{'grpc':>5}{'queued':>7}{'served':>8}")
    for r in report["instances"]:
        print(f"  {r['name']:<9}{r['pid'] or '-':>8}  {r['desired']:<11}{r['gateway']:<9}{r['in_flight_http']:>5}"
              f"{r['in_flight_grpc']:>5}{r['queued']:>7}{r['served']:>8}")


def print_up(dep: Deployment) -> None:
    state = dep.read()
    url, grpc_address = dep.urls(state)
    print(f"gateway ready: {len(state['instances'])} instance(s) of {', '.join(state['models'])} behind HAProxy")
    print(f"  HTTP   {url}/predictions/<{'|'.join(state['models'])}>   (health: {url}/healthz, no key)")
    print(f"  gRPC   {grpc_address}")
    n = len(dep.keys.entries())
    print(f"  keys   {dep.keys.map_path} (SHA-256 hashes; {n} key(s))"
          + ("" if n else f"; add one: sane deploy keys add NAME --out {dep.out}"))
    print(f"  send   Authorization: Bearer <key>; stop with: sane deploy down --out {dep.out}")


def _cmd(args: argparse.Namespace) -> int:
    out = args.out
    dep = Deployment(out)
    try:
        if args.deploy_cmd == "up":
            dep = up(args.instances, out, args.port, args.grpc_port, args.set, args.model_store, args.models,
                     args.config, args.timeout)
            print_up(dep)
        elif args.deploy_cmd == "down":
            print(f"stopped the deployment in {dep.out}" if down(out) else f"no deployment in {dep.out}")
        elif args.deploy_cmd == "status":
            report = status(out)
            print(json.dumps(report, indent=2)) if args.json else print_status(report)
        elif args.deploy_cmd == "keys":
            socket = dep.socket if dep.exists() and dep.gateway_running() else None
            if args.keys_cmd == "add":
                key = dep.keys.add(args.name, socket, replace=args.replace)
                if args.quiet:
                    print(key)
                else:
                    print(f"key {args.name!r} (shown once; only its SHA-256 is stored):\n{key}")
            elif args.keys_cmd == "revoke":
                dep.keys.revoke(args.name, socket)
                print(f"revoked {args.name!r}" + ("" if socket else " (the gateway is not running)"))
            else:
                entries = dep.keys.entries()
                for name, entry in entries.items():
                    print(f"{name:<24} created {entry['created']}  sha256 {entry['sha256'][:12]}...")
                if not entries:
                    print(f"no keys in {dep.keys.map_path}")
        elif args.deploy_cmd == "drain":
            drain(out, args.instance, args.timeout)
            print(f"{args.instance} is out of rotation with no request in flight "
                  f"(back with: sane deploy undrain {args.instance} --out {out})")
        elif args.deploy_cmd == "undrain":
            undrain(out, args.instance)
            print(f"{args.instance} is back in rotation")
        elif args.deploy_cmd == "restart":
            if not args.rolling:
                raise DeployError("only rolling restarts are offered: sane deploy restart --rolling")
            restart_rolling(out, args.timeout)
    except (DeployError, gateway.KeyNameError, gateway.GatewayError, FileNotFoundError) as exc:
        print(f"sane: error: {exc}")
        return 1
    return 0


def add_deploy_command(sub: argparse._SubParsersAction) -> None:
    """Register ``sane deploy up|down|status|keys|drain|undrain|restart``."""
    from sane.serving.ops.archive import DEFAULT_ARCHIVES

    deploy = sub.add_parser("deploy", help="N TorchServe instances behind the HAProxy gateway (keys, drain, rolling restart)")
    dsub = deploy.add_subparsers(dest="deploy_cmd", required=True)

    def with_out(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--out", default=DEFAULT_OUT, help=f"the deployment's directory (default {DEFAULT_OUT}/)")
        p.set_defaults(func=_cmd)
        return p

    def command(name: str, help: str, out: bool = True) -> argparse.ArgumentParser:
        p = dsub.add_parser(name, help=help)
        return with_out(p) if out else p

    p = command("up", "start the instances and the gateway; return once /healthz answers 200")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--port", type=int, default=8080, help="the gateway's HTTP port")
    p.add_argument("--grpc-port", type=int, default=7070, help="the gateway's gRPC port")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a config.properties key of every instance, or gateway.KEY (bind, bufsize, rate_limit, "
                        "retries, retry_after, timeout, maxconn, check_interval)")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_ARCHIVES))
    p.add_argument("--config", default="config.properties", help="the instances' TorchServe configuration")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each instance's READY")
    command("down", "drain, then stop the gateway, the supervisor and the instances (keys are kept)")
    p = command("status", "each instance's health and in-flight load")
    p.add_argument("--json", action="store_true")
    keys = command("keys", "API keys: add (printed once), list, revoke; effective at once", out=False)
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    k = with_out(ksub.add_parser("add", help="a new key for NAME, printed once"))
    k.add_argument("name")
    k.add_argument("--replace", action="store_true", help="replace NAME's key (the old one stops working)")
    k.add_argument("--quiet", action="store_true", help="print only the key")
    with_out(ksub.add_parser("list", help="key names and dates (never the keys)"))
    k = with_out(ksub.add_parser("revoke", help="revoke NAME's key"))
    k.add_argument("name")
    for name, help in (("drain", "take INSTANCE out of rotation and wait for its in-flight requests"),
                       ("undrain", "put a drained INSTANCE back in rotation")):
        p = command(name, help)
        p.add_argument("instance", help="i0, i1, ... (see sane deploy status)")
        p.add_argument("--timeout", type=float, default=330.0)
    p = command("restart", "restart the instances one at a time without failing a request")
    p.add_argument("--rolling", action="store_true", help="one at a time (the only mode)")
    p.add_argument("--timeout", type=float, default=330.0)
