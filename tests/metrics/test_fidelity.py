"""zoo's figures against torch-fidelity's own `calculate_metrics`, with a random-weight
Inception file made here in torch-fidelity's layout (no download). Needs torch-fidelity and
a torchvision matching torch: the `vision` lane (`pytest -m vision`, CI's second stage)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_VAR
from zoo import api as zoo_api
from zoo.metrics import samples as samples_module
from zoo.metrics.adm import ReferenceBatch, write_reference_batch
from zoo.metrics.evaluate import MetricOptions, folder_metrics

pytestmark = pytest.mark.vision
fidelity = pytest.importorskip(
    "torch_fidelity", reason="needs torch-fidelity and a torchvision matching torch: pip install 'zoo[metrics]'"
)

CPU = torch.device("cpu")


def image_folder(path, count, seed, shift):
    """Smooth random images (blobs), so features differ between the folders but are not noise."""
    path.mkdir()
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(32), np.arange(32), indexing="ij"), -1)
    for index in range(count):
        centre = rng.uniform(8, 24, size=(3, 1, 1, 2))
        blobs = np.exp(-((grid[None] - centre) ** 2).sum(-1) / rng.uniform(20, 80)) * 255
        image = np.clip(blobs.transpose(1, 2, 0) + shift + rng.normal(0, 8, (32, 32, 3)), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(path / f"{index:03d}.png")
    return path


def test_figures_equal_torch_fidelity_calculate_metrics(tmp_path, inception_weights):
    samples, reference = image_folder(tmp_path / "a", 20, 0, 0), image_folder(tmp_path / "b", 10, 1, 40)
    options = MetricOptions(
        ["fid", "isc", "kid", "prc"],
        ref=str(reference),
        inception_weights=inception_weights,
        cache_dir=tmp_path / "cache",
        check_weights=False,
    )
    ours = folder_metrics(samples, options, CPU)
    theirs = fidelity.calculate_metrics(
        input1=str(samples),
        input2=str(reference),
        cuda=False,
        isc=True,
        fid=True,
        kid=True,
        prc=True,
        kid_subset_size=10,
        feature_extractor="inception-v3-compat",  # zoo's precision/recall use Inception pool3, as ADM's evaluator
        feature_layer_prc="2048",
        feature_extractor_weights_path=str(inception_weights),
        cache=False,
        verbose=False,
        save_cpu_ram=True,
    )
    pairs = {
        "fid": "frechet_inception_distance",
        "isc_mean": "inception_score_mean",
        "isc_std": "inception_score_std",
        "kid_mean": "kernel_inception_distance_mean",
        "kid_std": "kernel_inception_distance_std",
        "precision": "precision",
        "recall": "recall",
        "f_score": "f_score",
    }
    for ours_key, their_key in pairs.items():
        assert ours[ours_key] == pytest.approx(theirs[their_key], rel=1e-6, abs=1e-12), ours_key
    assert ours["fid"] > 1 and ours["isc_mean"] > 1.001 and ours["kid_mean"] > 0  # features that differ
    assert ours["samples"] == 20 and "10 images" in ours["reference"]  # 2 per IS split: 1 would give IS 1

    # Against the same reference as an ADM batch.
    images = np.stack([np.asarray(Image.open(reference / f"{i:03d}.png")) for i in range(10)])
    write_reference_batch(tmp_path / "ref.npz", ReferenceBatch(None, None, images))
    adm = MetricOptions(
        ["fid", "prc"],
        ref=str(tmp_path / "ref.npz"),
        inception_weights=inception_weights,
        cache_dir=tmp_path / "cache",
        check_weights=False,
    )
    from_npz = folder_metrics(samples, adm, CPU)
    assert from_npz["fid"] == pytest.approx(ours["fid"], rel=1e-6)
    assert from_npz["precision"] == ours["precision"]


def test_fid_of_two_gaussians_is_the_closed_form():
    from scipy.linalg import sqrtm

    from zoo.metrics.fidelity import Features, figures

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma1, sigma2 = a @ a.T + np.eye(6), b @ b.T + np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    root = sqrtm(sigma1)
    closed = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * sqrtm(root @ sigma2 @ root).real)
    ours = figures(["fid"], Features(mu=mu1, sigma=sigma1), Features(mu=mu2, sigma=sigma2))["fid"]
    assert ours == pytest.approx(closed, rel=1e-9)
    # Diagonal covariances: |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)).
    s1, s2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    diagonal = figures(["fid"], Features(mu=mu1, sigma=np.diag(s1)), Features(mu=mu2, sigma=np.diag(s2)))["fid"]
    assert diagonal == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2)), rel=1e-9)


def test_a_run_is_measured_and_resumes_without_drawing_again(tmp_path, inception_weights, monkeypatch):
    """A tiny VAR with fresh weights: fid/isc/kid/prc of its class-balanced samples against a
    folder, its tokenizer's rFID; the second evaluation draws nothing and gives the same figures."""
    import zoo
    from zoo.api import Run

    plugin, config, model = zoo.create_model("var", preset="digits", **TINY_VAR)
    run = Run(plugin, config, model.eval(), tmp_path / "run", CPU)
    (tmp_path / "run").mkdir()
    calls = []
    sample = type(plugin).sample

    def counting(self, *args):
        calls.append(args[2].classes)
        return sample(self, *args)

    monkeypatch.setattr(type(plugin), "sample", counting)
    monkeypatch.setattr(samples_module, "CHUNK", 10)  # chunks of 10 images: fewer Inception passes
    reference = image_folder(tmp_path / "ref", 10, 2, 0)
    options = dict(
        ref=str(reference),
        samples=20,
        keep_samples=tmp_path / "kept",
        inception_weights=inception_weights,
        cache_dir=tmp_path / "cache",
        check_weights=False,
        held_out=4,
    )
    first = run.evaluate("fid,isc,kid,prc,rfid", **options)
    assert calls == [list(range(10)), list(range(10))]  # two chunks, class-balanced
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.png"))[-1] == "000019.png"
    assert first["samples"] == 20 and first["tokenizer/images"] == 4 and first["rfid/tokenizer"] > 0
    assert len(first["inception_sha256"]) == 64 and "cfg" in first["sample_options"]
    again = run.evaluate("fid,isc,kid,prc,rfid", **options)
    assert len(calls) == 2  # nothing drawn again (and the samples' features come from the folder's cache)
    assert again == first

    # The same model's export, sampled with onnxruntime by the same loop and options.
    from zoo.metrics.evaluate import MetricOptions, evaluate_metrics, export_target
    from zoo_onnx import export_model

    sampling = ["transformer_step", "embed_0", "embed_1", "embed_2", "embed_3", "decoder"]
    export_model(plugin, model, config, tmp_path / "export", components=sampling)
    exported = evaluate_metrics(
        export_target(tmp_path / "export"),
        MetricOptions(["fid"], **{**options, "keep_samples": tmp_path / "kept-onnx", "held_out": None}),
        CPU,
    )
    assert len(calls) == 2 and exported["samples"] == 20 and exported["fid"] > 0
    assert exported["reference"] == first["reference"]


def test_timm_builds_a_real_backbone():
    """The timm path of the perceptual loss with the real library (elsewhere it is faked)."""
    pytest.importorskip("timm", reason="needs timm and a torchvision matching torch")
    from zoo.nn.perceptual import build_timm_backbone

    backbone = build_timm_backbone("resnet18").eval()
    features = backbone(torch.zeros(1, 3, 32, 32))
    assert [f.shape[1] for f in features] == [64, 64, 128, 256, 512]


def test_quantart_is_measured_on_its_transfer_and_both_vqgans(tmp_path, inception_weights):
    from tests.plugins.test_quantart import MICRO
    from zoo.metrics.evaluate import MetricOptions, evaluate_metrics, run_target

    plugin, config, model = zoo_api.create_model("quantart", **MICRO)
    target = run_target(plugin, config, model.eval(), tmp_path, CPU)
    options = MetricOptions(["fid", "rfid"], inception_weights=inception_weights, check_weights=False, held_out=3)
    record = evaluate_metrics(target, options, CPU)
    assert {"fid/transfer", "ssim/transfer", "rfid/vqgan_photo", "rfid/vqgan_art"} <= set(record)
    assert record["transfer/images"] == 3 and record["fid/transfer"] > 0 and -1 <= record["ssim/transfer"] < 1
    assert not (tmp_path / "metric_samples").exists()  # no sample set drawn for a style transfer
