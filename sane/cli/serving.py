"""The serving subcommands of `sane`: ``archive``, ``serve`` (``--stop``) and ``request``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = "out/serve"
DEFAULT_STORE = "model_store"
DEFAULT_CONFIG = "config.properties"


def _parse_value(text: str) -> Any:
    """``--set`` values: YAML scalars (8, 0.5, true, rise, [rise, lime])."""
    import yaml

    return yaml.safe_load(text)


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["batchSize=8", "handler.max_n_masks=500"]`` -> ``{"batchSize": 8, "handler": {"max_n_masks": 500}}``."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        if key.startswith("handler."):
            out.setdefault("handler", {})[key[len("handler."):]] = _parse_value(value)
        else:
            out[key] = _parse_value(value)
    return out


def _cmd_archive(args: argparse.Namespace) -> int:
    from sane.cli.model_args import load_from_args
    from sane.serving.ops.archive import build_archive, merge_config, profile_config

    overrides = _overrides(args.set)
    sizes = {"gpus": args.gpus, "workers_per_gpu": args.workers_per_gpu, "workers": args.workers, "cores": args.cores}
    if args.profile is not None:
        profile = profile_config(args.profile, **sizes)
        overrides = merge_config(profile, overrides)  # --set wins over the profile
        print(f"profile {args.profile}: {_describe_profile(profile)}")
    elif any(v is not None for v in sizes.values()):
        raise ValueError("--gpus, --workers-per-gpu, --workers and --cores need --profile gpu or cpu")
    if args.name is not None and len(args.names) != 1:
        raise ValueError("--name names one archive: build one kind (similarity, saliency or sane) at a time")
    loaded = load_from_args(args)  # validated once, before any archive is built
    print(f"{loaded.source} ({loaded.format}), checked; the archives declare:")
    for line in loaded.spec.describe():
        print(f"  {line}")
    for name in args.names:
        path = build_archive(name, args.out, model_path=loaded, handlers=args.handlers, config_overrides=overrides,
                             code=tuple(args.code or ()), attribute_model=args.attribute_model, model_name=args.name)
        print(f"wrote {path}")
    return 0


def _describe_profile(profile: dict[str, Any]) -> str:
    handler = profile["handler"]
    devices = f"GPUs {profile['deviceIds']}" if profile["deviceType"] == "gpu" else "CPU"
    return (f"{profile['maxWorkers']} workers on {devices}, {handler['threads']} thread(s) each"
            + (f", forward batches of {handler['batch_size']}, amp" if handler.get("amp") else ""))


def _cmd_serve(args: argparse.Namespace) -> int:
    from sane.serving.ops.server import (
        ServerError,
        render_properties,
        running_server,
        start_server,
        stop_server,
    )

    workdir = Path(args.workdir)
    if args.stop:
        if stop_server(workdir):
            print(f"TorchServe (started from {workdir}) has stopped.")
        else:
            print(f"no TorchServe started from {workdir} is running.")
        return 0
    if running_server(workdir):
        if not args.restart:
            print(f"sane: error: a TorchServe started from {workdir} is already running; "
                  "stop it with `sane serve --stop` (or pass --restart)")
            return 2
        stop_server(workdir)
    config = Path(args.config)
    if not config.is_file():
        raise FileNotFoundError(f"no TorchServe configuration at {config}")
    if args.set:
        workdir.mkdir(parents=True, exist_ok=True)
        props = dict(p.split("=", 1) for p in args.set)
        config = render_properties(config, workdir / "config.properties", props)
    print(f"starting TorchServe ({config}, models {', '.join(args.models)}); waiting for READY ...", flush=True)
    try:
        info = start_server(args.model_store, args.models, config, workdir, args.disable_token_auth, args.timeout)
    except ServerError as exc:
        print(f"sane: error: {exc}")
        return 1
    print(f"TorchServe is ready (pid {info.pid})")
    print(f"  HTTP inference  {info.inference_url}/predictions/<{'|'.join(info.models)}>")
    print(f"  gRPC inference  {info.grpc_address}")
    print(f"  metrics         {info.metrics_url}/metrics")
    if info.token_auth:
        print(f"  token auth ON:  send 'Authorization: Bearer <key>' with the inference key from "
              f"{Path(info.workdir) / 'key_file.json'}")
    else:
        print("  token auth OFF (loopback only; for clients beyond this machine, with API keys that do not "
              "expire: sane deploy up --instances 1)")
    print(f"  logs            {Path(info.workdir) / 'logs'}")
    print(f"stop it with: sane serve --stop{'' if args.workdir == DEFAULT_WORKDIR else ' --workdir ' + args.workdir}")
    return 0


def _request_options(args: argparse.Namespace) -> dict[str, Any]:
    options = json.loads(args.options) if args.options else {}
    for name in ("method", "mode", "n_masks", "seed"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    return options


def _request_target(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(HTTP URL, gRPC address, key) of the server to ask: ``--url``/``--grpc`` if given, else the
    deployment in ``--deploy`` (its gateway), else the `sane serve` in ``--workdir``, else the default
    deployment if one runs, else 127.0.0.1:8080/7070. The key: ``--key``, else ``$SANE_API_KEY``, else
    (a `sane serve` with TorchServe token auth on) its inference token."""
    from sane.serving.ops.deploy import DEFAULT_OUT, Deployment
    from sane.serving.ops.server import read_keys, running_server

    key = args.key or os.environ.get("SANE_API_KEY") or None
    url, grpc_address = "http://127.0.0.1:8080", "127.0.0.1:7070"
    deployment = Deployment(args.deploy or DEFAULT_OUT)
    info = None if args.deploy else running_server(args.workdir)
    if args.deploy and not deployment.exists():
        raise FileNotFoundError(f"no deployment in {args.deploy} (start one with `sane deploy up --out {args.deploy}`)")
    if info is not None:
        url, grpc_address = info.inference_url, info.grpc_address
        if key is None and info.token_auth:
            key = read_keys(args.workdir).get("inference")
    elif deployment.exists() and (args.deploy or deployment.gateway_running()):
        url, grpc_address = deployment.urls()
    return args.url or url, args.grpc or grpc_address, key


def _cmd_request(args: argparse.Namespace) -> int:
    url, grpc_address, key = _request_target(args)
    query = Path(args.query).read_bytes()
    references = [Path(path).read_bytes() for path in args.reference]
    reference = references[0] if len(references) == 1 else references
    options = _request_options(args)
    if args.grpc is not None:
        import grpc

        from sane.serving.ops.grpc_client import GrpcClient

        try:
            with GrpcClient(grpc_address, key) as client:
                response = client.request(args.archive, query, reference, options)
        except grpc.RpcError as exc:
            hint = " (send a key: --key or $SANE_API_KEY)" if exc.code() == grpc.StatusCode.UNAUTHENTICATED else ""
            print(f"sane: error: the server answered {exc.code().name}: {exc.details()}{hint}")
            return 1
        status = 400 if "error" in response else 200
    else:
        from sane.serving.ops.http_client import HttpClient

        status, response = HttpClient(url, key).request(args.archive, query, reference, options, body=args.body)
    if status != 200 or "error" in response:
        print(f"sane: error: the server answered {status}: {response.get('error', response)}"
              + (f" (field {response['field']})" if response.get("field") else ""))
        return 1
    if len(args.reference) == 1:
        lines = write_response(response, args.out, args.query, args.reference[0], args.display_size)
    else:  # one folder per reference, each as for a single reference
        common = {k: v for k, v in response.items() if k != "references"}
        lines = []
        for k, (path, entry) in enumerate(zip(args.reference, response["references"])):
            own = {**common, **entry}
            if "n_masks_used" in entry:  # auto: this reference's map stopped on its own
                own["options"] = {**common.get("options", {}), "n_masks_used": own.pop("n_masks_used")}
            lines += [f"reference {k}: {path}"] + write_response(own, Path(args.out) / f"reference_{k}",
                                                                  args.query, path, args.display_size)
    for line in lines:
        print(line)
    return 0


def write_response(response: dict, out: str | Path, query_path: str, reference_path: str,
                   display: int | None = None) -> list[str]:
    """Write a served explanation as `sane explain` writes one (:func:`~sane.explain.outputs.write_explanation`):
    overlays on the input images (cropped to a map's ``box``) at least ``display`` pixels on the long side,
    raw float16 maps (.npy), the server's own heat maps, card.png, result.json (the response without its
    base64 blobs). Returns the lines to print."""
    import base64

    from sane.explain.outputs import summary_lines, write_explanation
    from sane.heatmap import DISPLAY_SIDE
    from sane.images import open_image
    from sane.serving.worker.encoding import decode_npy

    report = {"query": str(query_path), "reference": str(reference_path), **json.loads(json.dumps(response))}
    maps, images, heatmaps = {}, {}, {}
    sources = (("query", query_path), ("reference", reference_path)) if report.get("saliency") else ()
    for name, source in sources:
        part = report["saliency"].get(name) or {}
        image = open_image(source, name)  # for the overlays and the card: a similarity answer has none
        images[name] = image.crop(tuple(part["box"])) if part.get("box") else image  # what the model saw
        if "png" in part:
            heatmaps[name] = base64.b64decode(part.pop("png"))
        if "npy" in part:
            maps[name] = decode_npy(part.pop("npy"))
    for part in [*(report.get("embeddings") or {}).values(), *([report["embedding"]] if "embedding" in report else [])]:
        part["npy"] = f"<{len(part['npy'])} base64 chars>"
    result = write_explanation(out, report, maps, images, heatmaps, display=DISPLAY_SIDE if display is None else display)
    return summary_lines(result, out)


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``archive``, ``serve``, ``request`` and ``deploy`` on the `sane` command's subparsers."""
    from sane.cli.deploy import add_deploy_command
    from sane.serving.ops.archive import ARCHIVES, DEFAULT_ARCHIVES

    archive = sub.add_parser("archive", help="build TorchServe archives (model_store/*.mar) with torch-model-archiver")
    archive.add_argument("names", nargs="*", default=list(DEFAULT_ARCHIVES), metavar="NAME",
                         help=f"archives to build, of {', '.join(ARCHIVES)} (default: {' '.join(DEFAULT_ARCHIVES)})")
    from sane.cli.model_args import add_model_options, mask_count

    add_model_options(archive)
    archive.add_argument("--code", action="append", metavar="PATH",
                         help="a file or folder the worker must import (a factory's code outside site-packages is "
                              "packed without it; repeat for more)")
    archive.add_argument("--attribute-model", default=None,
                         help="the sane archive's attribute checkpoint (default: the bundled SANE model)")
    archive.add_argument("--name", default=None, help="serve the archive under this name (default: its kind)")
    archive.add_argument("--out", default=DEFAULT_STORE, help="model store directory")
    archive.add_argument("--handlers", default=None, help="handlers directory (default: the checkout's handlers/)")
    archive.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override model-config.yaml, e.g. batchSize=8 or handler.max_n_masks=500")
    archive.add_argument("--profile", choices=["cpu", "gpu"], default=None,
                         help="model-config for the target: workers, devices, batch sizes, precision, threads "
                              "(--set still overrides it)")
    archive.add_argument("--gpus", type=int, default=None, help="--profile gpu: GPUs per box (default 1)")
    archive.add_argument("--workers-per-gpu", type=int, default=None,
                         help="--profile gpu: workers per GPU (default 2); workers = gpus x this")
    archive.add_argument("--workers", type=int, default=None, help="--profile cpu: workers (default: cores // 4)")
    archive.add_argument("--cores", type=int, default=None,
                         help="--profile cpu: the target machine's cores (default: this machine's)")
    archive.set_defaults(func=_cmd_archive)

    serve = sub.add_parser("serve", help="start TorchServe with the archives and wait until they are READY")
    serve.add_argument("--stop", action="store_true", help="stop the TorchServe started from --workdir")
    serve.add_argument("--config", default=DEFAULT_CONFIG, help="TorchServe config (default: production config.properties)")
    serve.add_argument("--model-store", default=DEFAULT_STORE)
    serve.add_argument("--models", nargs="+", default=list(DEFAULT_ARCHIVES), help="archives to serve")
    serve.add_argument("--workdir", default=DEFAULT_WORKDIR,
                       help="server working directory: key_file.json, logs/, tmp/ (its TMPDIR), server.json")
    serve.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config.properties key")
    serve.add_argument("--disable-token-auth", action="store_true",
                       help="force TorchServe's token authorization off (it is off in the shipped config.properties; "
                            "keys belong at the gateway: sane deploy)")
    serve.add_argument("--restart", action="store_true", help="stop a server already running from --workdir first")
    serve.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for READY")
    serve.set_defaults(func=_cmd_serve)

    request = sub.add_parser("request", help="send one explanation request to a running server; write heat maps")
    request.add_argument("query", help="query image file")
    request.add_argument("reference", nargs="+",
                         help="reference image file; several: one request with K references (sent as `references`)")
    request.add_argument("--archive", default="saliency", help="archive to ask (saliency, sane, similarity)")
    request.add_argument("--url", default=None,
                         help="HTTP URL (default: the gateway of --deploy, else the `sane serve` of --workdir, else "
                              "the gateway of out/deploy/ if one runs, else http://127.0.0.1:8080)")
    request.add_argument("--grpc", nargs="?", const="", default=None, metavar="HOST:PORT",
                         help="use gRPC instead of HTTP (address default: found as for --url)")
    request.add_argument("--deploy", default=None, metavar="DIR", help="send to the gateway of the deployment in DIR")
    request.add_argument("--body", default="multipart", choices=["multipart", "json"], help="HTTP body format")
    request.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where `sane serve` keeps server.json and key_file.json")
    request.add_argument("--key", "--token", dest="key", default=None,
                         help="API key for the gateway (`sane deploy keys add`; default: $SANE_API_KEY), or the "
                              "inference token of a TorchServe whose token auth is on")
    request.add_argument("--method", default=None)
    request.add_argument("--mode", default=None, choices=["fixed", "both"])
    request.add_argument("--n-masks", dest="n_masks", type=mask_count, default=None,
                         help="the generator's size (RISE masks, or 'auto': as precise as the ceiling's "
                              "fixed map, with fewer)")
    request.add_argument("--seed", type=int, default=None)
    request.add_argument("--options", default=None, help="further options as a JSON object")
    request.add_argument("--out", default="out/request", help="directory for heat maps, maps, card.png and result.json")
    request.add_argument("--display-size", type=int, default=448,
                         help="overlays at least this many pixels on the long side (0: the image's own size)")
    request.set_defaults(func=_cmd_request)
    add_deploy_command(sub)
