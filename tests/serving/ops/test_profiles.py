"""Workers per GPU: `sane archive --profile cpu|gpu` writes the model-config for the target, and each
worker resolves and pins the device TorchServe assigns it (a fake CUDA context: no GPU here)."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch
import yaml

import sane.serving.worker.handler as handler_module
from sane.cli import main as sane_main
from sane.saliency.masks import BANKS, BankCache
from sane.serving.ops.archive import profile_config
from sane.serving.ops.inprocess import load_handler
from sane.serving.worker.config import ServingConfig


def _model_config(mar) -> dict:
    with zipfile.ZipFile(mar) as z:
        return yaml.safe_load(z.read("model-config.yaml"))


def test_gpu_profile_spreads_n_times_k_workers_over_n_device_ids(tmp_path, capsys):
    assert sane_main(["archive", "similarity", "--profile", "gpu", "--gpus", "8", "--workers-per-gpu", "4",
                      "--out", str(tmp_path)]) == 0
    config = _model_config(tmp_path / "similarity.mar")
    assert config["minWorkers"] == config["maxWorkers"] == 32
    assert config["deviceType"] == "gpu" and config["deviceIds"] == list(range(8))
    assert config["handler"]["amp"] is True and config["handler"]["threads"] == 1
    assert config["handler"]["batch_size"] > 256 and config["batchSize"] >= 8
    assert "32 workers on GPUs [0, 1, 2, 3, 4, 5, 6, 7]" in capsys.readouterr().out
    # TorchServe hands worker w the GPU deviceIds[w % len(deviceIds)]: 4 workers on each of the 8.
    spread = [config["deviceIds"][w % len(config["deviceIds"])] for w in range(config["maxWorkers"])]
    assert {gpu: spread.count(gpu) for gpu in set(spread)} == dict.fromkeys(range(8), 4)


def test_set_still_overrides_the_profile(tmp_path):
    assert sane_main(["archive", "similarity", "--profile", "gpu", "--set", "handler.amp=false", "--set",
                      "batchSize=2", "--out", str(tmp_path)]) == 0
    config = _model_config(tmp_path / "similarity.mar")
    assert config["handler"]["amp"] is False and config["batchSize"] == 2 and config["maxWorkers"] == 2


@pytest.mark.parametrize("cores,workers", [(1, None), (2, None), (16, None), (16, 3), (64, 64), (7, 2)])
def test_cpu_profile_keeps_threads_times_workers_within_the_cores(cores, workers):
    config = profile_config("cpu", workers=workers, cores=cores)
    n, threads = config["maxWorkers"], config["handler"]["threads"]
    assert n == config["minWorkers"] == (workers or max(1, cores // 4))
    assert 1 <= threads and n * threads <= cores and (threads + 1) * n > cores  # uses them, never more
    assert config["deviceType"] == "cpu" and config["handler"]["device"] == "cpu"


def test_cpu_profile_defaults_to_this_machines_cores():
    config = profile_config("cpu")
    assert config["maxWorkers"] * config["handler"]["threads"] <= os.cpu_count()


@pytest.mark.parametrize("argv,message", [
    (["--profile", "cpu", "--gpus", "2"], "--gpus"),
    (["--profile", "gpu", "--workers", "2"], "--workers"),
    (["--profile", "gpu", "--gpus", "0"], "--gpus"),
    (["--profile", "cpu", "--workers", "9", "--cores", "8"], "--workers"),
    (["--gpus", "2"], "--profile"),
])
def test_bad_profile_arguments_are_clear_errors(argv, message, tmp_path, capsys):
    assert sane_main(["archive", "similarity", *argv, "--out", str(tmp_path)]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "similarity.mar").exists()


@pytest.fixture
def fake_gpus(monkeypatch):
    """CUDA with 8 devices, as far as device resolution can tell; set_device calls are recorded."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    pinned = []
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    return pinned


@pytest.mark.parametrize("device,gpu_id,expected", [
    ("auto", 5, "cuda:5"), ("auto", None, "cpu"), ("cuda", 3, "cuda:3"), ("cuda", None, "cuda:0"),
    ("cuda:2", 7, "cuda:2"), ("cpu", 4, "cpu"),
])
def test_device_resolution_follows_the_gpu_torchserve_assigns(fake_gpus, device, gpu_id, expected):
    assert ServingConfig(device=device).resolve_device(gpu_id) == torch.device(expected)


def test_device_resolution_errors_are_clear(fake_gpus, monkeypatch):
    with pytest.raises(ValueError, match="has 8 GPU"):
        ServingConfig(device="cuda").resolve_device(8)
    with pytest.raises(ValueError, match="has 8 GPU"):
        ServingConfig(device="cuda:9").resolve_device(None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ServingConfig(device="auto").resolve_device(3) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA"):
        ServingConfig(device="cuda").resolve_device(3)


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_each_worker_pins_itself_to_its_gpu(fake_gpus, monkeypatch, device):
    loaded_on = []
    real = handler_module.load_served_model

    def load_on_cpu(model_dir, serialized, where):  # the model itself stays on the CPU here
        loaded_on.append(where)
        return real(model_dir, serialized, torch.device("cpu"))

    monkeypatch.setattr(handler_module, "load_served_model", load_on_cpu)
    handler, _ = load_handler("similarity", config_overrides={"handler": {"device": device}}, gpu_id=6)
    assert handler.device == torch.device("cuda:6")
    assert loaded_on == [torch.device("cuda:6")] and fake_gpus == [torch.device("cuda:6")]


def test_the_mask_cache_is_bounded_in_bytes_not_entries():
    cache = BankCache(10_000)
    made = []

    def make(n):
        made.append(n)
        return torch.zeros(n, dtype=torch.float32)  # 4 n bytes

    for n in (1000, 1000, 500):  # 4000 + 2000 bytes
        cache.get(("k", n), lambda n=n: make(n))
    assert made == [1000, 500] and cache.nbytes == 6000
    cache.get(("big",), lambda: make(1500))  # 6000 more: the least recently used (1000) goes
    assert cache.nbytes == 8000 and ("k", 1000) not in cache._items
    cache.get(("huge",), lambda: make(5000))  # larger than the whole budget: made, not kept
    assert cache.nbytes == 8000 and ("huge",) not in cache._items
    cache.resize(3000)
    assert cache.nbytes <= 3000
    # The workers' cache follows the archive's handler.mask_cache_mb.
    before = BANKS.max_bytes
    try:
        load_handler("similarity", config_overrides={"handler": {"mask_cache_mb": 64}})
        assert BANKS.max_bytes == 64 * 2**20
    finally:
        BANKS.resize(before)
