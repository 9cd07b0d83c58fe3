"""The user's own similarity model: torchvision ViT and ResNet at 224 px in every format (TorchScript,
torch.export, a factory), declared preprocessing and similarity, validation errors, explained
in-process and from archives built from them; a 96-px model with its own mean/std whose map must
peak where it looks; the plain data layouts; the full ViT-B/16 once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import RegionModel, inside
from PIL import Image
from tiny_real_data import AWA2_PREDICATES, AWA2_TEST, write_tiny_csv, write_tiny_folders
from torch import nn

from sane.cli import main
from sane.data import open_dataset
from sane.data.formats import detect_format
from sane.errors import InputError
from sane.images import Preprocess
from sane.models import Embedder, load_similarity
from sane.models.checkpoint import DeclaredEmbedding, load_model
from sane.models.spec import PRESETS, EmbeddingSpec, ModelSpec, sidecar_path
from sane.models.validation import ModelValidationError
from sane.saliency import RISE, SlidingWindow
from sane.saliency.masks import RiseMaskStream, rise_masks
from sane.serving.ops.http_client import HttpClient
from sane.serving.ops.inprocess import load_archive, payload, run_batch
from sane.serving.ops.server import temporary_server
from sane.serving.worker.encoding import decode_npy

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "own_model"
sys.path.insert(0, str(RECIPE))
import vit_b16  # noqa: E402  (the README's recipe, imported as users' factories are)

TINY_VIT = {"image_size": 224, "patch_size": 32, "layers": 2, "heads": 2, "hidden": 64, "mlp": 128}
DECLARE = ["--preprocess", "imagenet"]


def _images() -> tuple[bytes, bytes]:
    return (ROOT / "examples" / "query.jpg").read_bytes(), (ROOT / "examples" / "reference.jpg").read_bytes()


def _export(model: nn.Module, path: Path, size: int, dynamic: bool = True) -> Path:
    x = torch.randn(2, 3, size, size)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None)
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, dict[str, str]]:
    """A tiny ViT and a ResNet-18 (random weights, eval mode) at 224 px, each as TorchScript, .pt2 and a
    factory's state_dict: {family: {format: path or factory name}}."""
    root = tmp_path_factory.mktemp("own_models")
    torch.manual_seed(0)
    vit = vit_b16.image_encoder(**TINY_VIT)
    vit_b16.save_all(vit, root, "vit", 224)
    resnet = torchvision.models.resnet18(num_classes=32).eval()
    torch.jit.trace(resnet, torch.randn(1, 3, 224, 224)).save(str(root / "resnet.pt"))
    _export(resnet, root / "resnet.pt2", 224)
    torch.save(resnet.state_dict(), root / "resnet_state.pt")
    return {
        "vit": {"torchscript": str(root / "vit.pt"), "export": str(root / "vit.pt2"),
                "factory": "vit_b16:image_encoder", "weights": str(root / "vit_state.pt"),
                "kwargs": json.dumps(TINY_VIT)},
        "resnet": {"torchscript": str(root / "resnet.pt"), "export": str(root / "resnet.pt2"),
                   "factory": "torchvision.models:resnet18", "weights": str(root / "resnet_state.pt"),
                   "kwargs": json.dumps({"num_classes": 32})},
    }


def _load(entry: dict[str, str], fmt: str, **declarations):
    if fmt == "factory":
        return load_model(entry["factory"], weights=entry["weights"], factory_kwargs=json.loads(entry["kwargs"]),
                          **declarations)
    return load_model(entry[fmt], **declarations)


def _cli_model(entry: dict[str, str], fmt: str) -> list[str]:
    if fmt == "factory":
        return ["--model", entry["factory"], "--weights", entry["weights"], "--model-kwargs", entry["kwargs"]]
    return ["--model", entry[fmt]]


FORMATS = ["torchscript", "export", "factory"]


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_every_format_loads_to_the_same_function(models, family):
    x = Preprocess.from_dict(PRESETS["imagenet"].to_dict()).to_tensor(Image.open(ROOT / "examples/query.jpg"))[None]
    outs = {}
    for fmt in FORMATS:
        loaded = _load(models[family], fmt, preset="imagenet")
        assert loaded.format == fmt and loaded.preprocess == PRESETS["imagenet"] and not loaded.model.training
        outs[fmt] = Embedder(loaded.model)(x)
    for fmt in FORMATS[1:]:
        torch.testing.assert_close(outs[fmt], outs["torchscript"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "resnet"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_explained_by_the_cli_and_served_from_an_archive_with_the_same_map(models, family, fmt, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPE))
    entry = models[family]
    out = tmp_path / "explain"
    args = ["explain", str(ROOT / "examples/query.jpg"), str(ROOT / "examples/reference.jpg"), *_cli_model(entry, fmt),
            *DECLARE, "--n-masks", "24", "--batch-size", "12", "--no-attributes", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "result.json").read_text())
    local = np.load(out / "query_saliency.npy").astype(np.float32)
    assert local.shape == (224, 224) and report["preprocess"]["input_size"] == 224
    # The similarity is the model's own cosine on the declared preprocessing.
    loaded = _load(entry, fmt, preset="imagenet")
    q, r = (PRESETS["imagenet"].to_tensor(Image.open(ROOT / f"examples/{n}.jpg").convert("RGB")) for n in
            ("query", "reference"))
    with torch.inference_mode():
        e = torch.nn.functional.normalize(loaded.model(torch.stack([q, r])), dim=1)
    assert report["similarity"] == pytest.approx(float(e[0] @ e[1]), abs=1e-4)

    assert main(["archive", "saliency", *_cli_model(entry, fmt), *DECLARE, "--name", f"{family}_{fmt}",
                 "--out", str(tmp_path / "store")]) == 0
    handler, context = load_archive(tmp_path / "store" / f"{family}_{fmt}.mar")
    [(status, body)] = run_batch(handler, context, [payload("json", *_images(), {"n_masks": 24, "seed": 0})])
    assert status == 200, body
    served = decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32)
    assert body["saliency"]["query"]["box"] == list(PRESETS["imagenet"].crop_box(112, 112))
    np.testing.assert_allclose(served, local, rtol=2e-3, atol=2e-3)
    assert body["similarity"] == pytest.approx(report["similarity"], abs=1e-4)


class Pooled(nn.Module):
    """96 px: embeds the pixels of one box (pooled), plus a constant part (RegionModel, written so that
    torch.export keeps the batch dimension dynamic); exported as .pt2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = BOX
        feats = torch.nn.functional.avg_pool2d(x[:, :, y0:y1, x0:x1], 4).flatten(1)
        return torch.cat([feats, torch.ones_like(feats[:, :4])], 1)


BOX = (56, 88, 8, 40)  # rows 56..88, columns 8..40 of a 96 x 96 input
MEAN, STD = "0.3,0.4,0.5", "0.2,0.25,0.3"


@pytest.fixture(scope="module")
def region_pt2(tmp_path_factory) -> Path:
    return _export(Pooled().eval(), tmp_path_factory.mktemp("region") / "region.pt2", 96)


def test_a_96_px_model_with_its_own_constants_peaks_where_it_looks_in_the_cli_and_the_archive(region_pt2, tmp_path):
    q, r = _images()
    out = tmp_path / "out"
    assert main(["explain", str(ROOT / "examples/query.jpg"), str(ROOT / "examples/reference.jpg"), "--model",
                 str(region_pt2), "--input-size", "96", "--mean", MEAN, "--std", STD, "--n-masks", "400",
                 "--no-attributes", "--out", str(out)]) == 0
    local = np.load(out / "query_saliency.npy").astype(np.float32)
    assert local.shape == (96, 96) and inside(BOX, int(local.argmax()), 96)
    result = json.loads((out / "result.json").read_text())
    assert result["preprocess"]["mean"] == [0.3, 0.4, 0.5] and result["preprocess"]["std"] == [0.2, 0.25, 0.3]

    assert main(["archive", "saliency", "--model", str(region_pt2), "--input-size", "96", "--mean", MEAN, "--std",
                 STD, "--name", "region", "--out", str(tmp_path / "store")]) == 0
    handler, context = load_archive(tmp_path / "store" / "region.mar")
    assert handler.preprocess == Preprocess(96, (0.3, 0.4, 0.5), (0.2, 0.25, 0.3))
    [(status, body)] = run_batch(handler, context, [payload("multipart", q, r, {"n_masks": 400})])
    assert status == 200
    np.testing.assert_allclose(decode_npy(body["saliency"]["query"]["npy"]).astype(np.float32), local, atol=1e-3)


def test_the_wrong_input_size_is_a_clear_error_naming_it(region_pt2, models, capsys):
    q, r = str(ROOT / "examples/query.jpg"), str(ROOT / "examples/reference.jpg")
    assert main(["explain", q, r, "--model", str(region_pt2), "--input-size", "128", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "declared input size 128 x 128" in err and "it runs at 96 px" in err and "Traceback" not in err
    with pytest.raises(ModelValidationError, match="declared input size 112.*runs at 224 px.*--input-size 224") as info:
        load_model(models["vit"]["export"])
    assert info.value.check == "input_size"
    # sane archive refuses it before building anything.
    assert main(["archive", "saliency", "--model", models["vit"]["torchscript"], "--out", "/nonexistent"]) == 2
    assert "declared input size 112" in capsys.readouterr().err


class Tokens(nn.Module):
    def forward(self, x):
        return x.flatten(2).transpose(1, 2)[:, :5]  # (B, 5, 3): tokens, not one vector


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)

    def forward(self, x):
        pooled = x.mean((2, 3))
        return {"image_embeds": self.proj(pooled), "pooled": pooled}


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 4)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(x.mean((2, 3)))


def _bn_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.parametrize("case,check,message", [
    ("tokens", "output_rank", r"returns shape \(3, 5, 3\).*\(B, D\).*CLS token"),
    ("dict", "output", r"dict with keys \['image_embeds', 'pooled'\].*--output image_embeds"),
    ("train_bn", "batch_dependent", r"mixes the images of a batch.*eval mode"),
    ("dropout", "deterministic", r"not deterministic.*dropout"),
    ("constant", "constant", r"same embedding for different images"),
])
def test_each_validation_failure_names_what_is_wrong(tmp_path, case, check, message):
    x = torch.randn(2, 3, 32, 32)
    if case == "tokens":
        path = _export(Tokens(), tmp_path / "m.pt2", 32)
    elif case == "dict":
        path = tmp_path / "m.pt"
        torch.jit.trace(DictOut(), x, strict=False).save(str(path))
    elif case == "train_bn":
        path = _export(_bn_net().train(), tmp_path / "m.pt2", 32)
    elif case == "dropout":
        path = tmp_path / "m.pt"
        torch.jit.trace(nn.Sequential(nn.Flatten(), nn.Dropout(0.5)).train(), x, check_trace=False).save(str(path))
    else:
        path = _export(Constant(), tmp_path / "m.pt2", 32)
    with pytest.raises(ModelValidationError, match=message) as info:
        load_model(path, input_size=32)
    assert info.value.check == check and info.value.field == "model"


def test_a_program_exported_with_a_fixed_batch_runs_in_chunks_with_a_warning(tmp_path):
    net = _bn_net().eval()
    path = _export(net, tmp_path / "static.pt2", 32, dynamic=False)  # batch of exactly 2
    with pytest.warns(UserWarning, match="fixed batch size of 2.*dynamic_shapes.*2 image"):
        loaded = load_model(path, input_size=32)
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), net(x), rtol=1e-5, atol=1e-6)


def test_a_declared_dict_output_and_the_other_similarities_are_used(tmp_path):
    path = tmp_path / "dict.pt"
    torch.jit.trace(DictOut().eval(), torch.randn(2, 3, 32, 32), strict=False).save(str(path))
    for similarity in ("dot", "euclidean"):
        loaded = load_model(path, input_size=32, output="image_embeds", similarity=similarity)
        q, r = torch.randn(3, 32, 32), torch.randn(3, 32, 32)
        with torch.inference_mode():
            raw = loaded.model.net(torch.stack([q, r]))["image_embeds"]
        expected = float(raw[0] @ raw[1]) if similarity == "dot" else -float((raw[0] - raw[1]).norm())
        result = RISE(loaded.model, n_masks=20, batch_size=8).explain(q, r)
        assert result.similarity == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_a_distance_in_both_mode_averages_over_every_masked_reference(image64):
    """mean_j s(q_i, r_j) is not s(q_i, mean r_j) for a distance: the engine must score every r_j."""
    net = RegionModel((8, 40, 8, 40))
    model = DeclaredEmbedding(net, EmbeddingSpec(similarity="euclidean")).eval()
    reference = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(3))
    generator = RISE(model, n_masks=40, n_reference_masks=6, batch_size=16, seed=2)
    result = generator.explain(image64, reference, mode="both")
    qm, rm = generator.query_masks((64, 64)), generator.reference_masks((64, 64))
    with torch.inference_mode():
        eq = net(image64 * qm[:, None])  # substrate "mean" is 0
        er = net(reference * rm[:, None])
        scores = -torch.cdist(eq, er).mean(1)  # (N,): mean over the masked references
    expected = (scores[:, None, None] * qm).sum(0) / qm.sum(0)
    torch.testing.assert_close(result.query_map, expected, rtol=1e-4, atol=1e-5)


def test_crop_preprocessing_sees_the_centre_and_presets_carry_their_constants():
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    image.paste((255, 255, 255), (50, 0, 250, 200))  # a white centre square 200 x 200
    crop = Preprocess(100, resize="crop")
    assert crop.crop_box(300, 200) == (50, 0, 250, 200)
    assert crop.to_tensor(image).shape == (3, 100, 100)
    assert np.asarray(crop.view(image)).min() > 200  # only the white square is seen (edges blend a little)
    assert np.asarray(Preprocess(100).view(image)).min() < 10  # squash keeps the black sides
    assert PRESETS["clip"].mean == (0.48145466, 0.4578275, 0.40821073) and PRESETS["clip"].interpolation == "bicubic"
    assert PRESETS["imagenet"].resize_size == 256 and PRESETS["imagenet"].size == 224
    with pytest.raises(InputError, match="std must be positive"):
        Preprocess(std=(0.2, 0.0, 0.2))


def test_declarations_are_saved_beside_the_model_and_used_from_then_on(region_pt2, tmp_path, capsys):
    model = tmp_path / "region.pt2"
    model.write_bytes(region_pt2.read_bytes())
    assert main(["model", "inspect", str(model), "--input-size", "96", "--mean", MEAN, "--std", STD,
                 "--similarity-fn", "dot", "--save"]) == 0
    printed = capsys.readouterr().out
    assert "input size     96 x 96 px" in printed and "similarity     dot" in printed and "batch-independent" in printed
    assert sidecar_path(model) == tmp_path / "region.sane.json"
    stored = ModelSpec.load(sidecar_path(model))
    assert stored.preprocess.size == 96 and stored.embedding.similarity == "dot"
    loaded, pre = load_similarity(model)  # no flags: the stored declarations
    assert pre == Preprocess(96, (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)) and loaded.embedding_spec.similarity == "dot"


def test_files_that_are_not_models_say_what_to_do(tmp_path, models):
    with pytest.raises(ValueError, match="holds a state_dict.*package.module:callable"):
        load_model(models["resnet"]["weights"])
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="pickled Python object.*TorchScript"):
        load_model(tmp_path / "pickled.pt")
    with pytest.raises(InputError, match="cannot import 'no_such_module'"):
        load_model("no_such_module:build")
    with pytest.raises(InputError, match="does not fit the network.*missing keys"):
        load_model("torchvision.models:resnet18", weights=models["vit"]["weights"])


def test_a_large_mask_bank_is_streamed_and_gives_the_same_map(monkeypatch, image64):
    full = rise_masks(300, 8, 0.5, (64, 64), 5)
    stream = RiseMaskStream(300, 8, 0.5, (64, 64), 5, "cpu")
    torch.testing.assert_close(stream[37:290], full[37:290], rtol=0, atol=0)
    model = RegionModel((8, 40, 8, 40))
    whole = RISE(model, n_masks=300, batch_size=64, seed=5).explain(image64, image64).query_map
    monkeypatch.setattr("sane.saliency.masks.MAX_BANK_BYTES", 0)
    generator = RISE(model, n_masks=300, batch_size=64, seed=5)
    assert isinstance(generator.query_masks((64, 64)), RiseMaskStream)
    torch.testing.assert_close(generator.explain(image64, image64).query_map, whole, rtol=1e-5, atol=1e-6)


def test_the_sliding_window_scales_with_the_input_size():
    model = RegionModel((112, 176, 16, 80), pool=8)
    image = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0))
    result = SlidingWindow(model, batch_size=128).explain(image, image)
    assert result.query_map.shape == (224, 224) and inside((112, 176, 16, 80), int(result.query_map.argmax()), 224)


@pytest.mark.parametrize("writer,layout", [(write_tiny_csv, "csv"), (write_tiny_folders, "folders")])
def test_the_plain_layouts_load_with_classes_attributes_and_a_held_out_split(tmp_path, writer, layout):
    root = writer(tmp_path / layout)
    assert detect_format(root) == layout
    train, test = open_dataset(root, "train", Preprocess(32)), open_dataset(root, "test", Preprocess(32))
    assert train.attributes == test.attributes == AWA2_PREDICATES  # the header's order
    assert not set(train.split_classes) & set(test.split_classes) and train.split_classes and test.split_classes
    if layout == "csv":
        assert test.split_classes == sorted(AWA2_TEST)
    everything = open_dataset(root, "all", Preprocess(32))
    assert len(everything) == len(train) + len(test) == 5 * 6
    row = everything.image_attributes[everything.targets.index(everything.classes.index("zebra"))]
    assert {a for a, bit in zip(everything.attributes, row) if bit} == {"black", "white", "stripes"}
    assert train[0]["image"].shape == (3, 32, 32)


@pytest.mark.slow
def test_the_pipeline_trains_sane_for_the_users_own_model_on_a_csv_layout(tmp_path, region_pt2, capsys):
    data = write_tiny_csv(tmp_path / "data", size=96)
    out = tmp_path / "run"
    tiny = ["--image-size", "32", "--n-masks", "8", "--refs", "2", "--map-size", "8", "--attribute-epochs", "2",
            "--attribute-batch-size", "16", "--prior-pairs", "4", "--tune-pairs", "4", "--eval-pairs", "4",
            "--eval-n-masks", "8", "--k", "2", "--batch-size", "32", "--quiet"]
    assert main(["pipeline", "--data", str(data), "--out", str(out), "--similarity", str(region_pt2),
                 "--input-size", "96", "--mean", MEAN, "--std", STD, *tiny]) == 0
    printed = capsys.readouterr().out
    assert "own-similarity done" in printed and f"using {region_pt2}" in printed and "train-similarity" not in printed
    assert not (out / "similarity.pt").exists() and (out / "attributes_sane.pt").is_file()
    report = json.loads((out / "eval_explanations.json").read_text())
    assert report["n_pairs"] == 4 and set(report["methods"]) >= {"SANE", "Attribute Classifier"}


@pytest.mark.slow
def test_the_full_vit_b16_is_explained_in_process(one_thread):
    loaded = load_model("vit_b16:image_encoder", preset="imagenet")  # ViT-B/16, random weights, 224 px
    assert loaded.checks["dim"] == 768
    image = PRESETS["imagenet"].to_tensor(Image.open(ROOT / "examples/query.jpg").convert("RGB"))
    result = RISE(loaded.model, n_masks=6, batch_size=6).explain(image, image)
    assert result.query_map.shape == (224, 224) and torch.isfinite(result.query_map).all()
    assert float(result.query_map.std()) > 0


@pytest.mark.slow
def test_a_real_torchserve_serves_the_users_models_with_the_in_process_maps(tmp_path, region_pt2, models, monkeypatch):
    """The .pt2 region model (96 px, own constants) and the ViT factory (its code packed in the archive)
    served by TorchServe over HTTP give the maps the unpacked archives give in-process."""
    monkeypatch.syspath_prepend(str(RECIPE))
    store = tmp_path / "model_store"
    assert main(["archive", "saliency", "--model", str(region_pt2), "--input-size", "96", "--mean", MEAN, "--std",
                 STD, "--name", "region", "--out", str(store), "--set", "handler.batch_size=64"]) == 0
    vit = models["vit"]
    assert main(["archive", "saliency", *_cli_model(vit, "factory"), *DECLARE, "--name", "vit", "--out", str(store),
                 "--set", "handler.batch_size=16"]) == 0
    q, r = _images()
    options = {"n_masks": 48, "seed": 3}
    expected = {}
    for name in ("region", "vit"):
        handler, context = load_archive(store / f"{name}.mar")
        [(status, body)] = run_batch(handler, context, [payload("json", q, r, options)])
        assert status == 200, body
        expected[name] = body
    with temporary_server(tmp_path, ["region", "vit"], ROOT / "config.properties", build=False) as info:
        http = HttpClient(info.inference_url, timeout=120)
        for name in ("region", "vit"):
            status, served = http.request(name, q, r, options)
            assert status == 200, served
            assert served["similarity"] == pytest.approx(expected[name]["similarity"], abs=1e-5)
            np.testing.assert_allclose(decode_npy(served["saliency"]["query"]["npy"]).astype(np.float32),
                                       decode_npy(expected[name]["saliency"]["query"]["npy"]).astype(np.float32),
                                       rtol=1e-3, atol=5e-4)
    assert decode_npy(expected["region"]["saliency"]["query"]["npy"]).shape == (96, 96)
