"""The CLI and the Python API, end to end on the example plugin (found via its entry point)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import zoo
import zoo.api
from tests.conftest import BLOCK_TORCH, zoo_command
from zoo.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, example_site):
    """One short training of the example through the real console entry point."""
    import os

    from tests.conftest import EXAMPLE

    run_dir = tmp_path_factory.mktemp("runs") / "ae"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(example_site)]),
        "ZOO_LOAD_PLUGINS": "tiny_autoencoder",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        zoo_command(
            "train",
            "tiny_autoencoder",
            "--preset",
            "fast",
            "--set",
            "steps=120",
            "--out",
            str(run_dir),
            "--quiet",
            "--device",
            "cpu",
        ),
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert f"sample grid: {run_dir}/samples/autoencoder.png" in result.stdout
    return run_dir


def test_training_writes_a_complete_run_and_learns(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "samples",
        "state",
    }
    record = json.loads((trained_run / "config.json").read_text())
    assert record["model"] == "tiny_autoencoder" and record["preset"] == "fast" and record["config"]["steps"] == 120
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    mse = [r["mse"] for r in rows if "mse" in r]
    assert mse[-1] < 0.6 * mse[0]
    assert Image.open(trained_run / "samples" / "autoencoder.png").size[0] > 16


def test_sample_eval_and_info_on_the_run(trained_run, tmp_path, capsys, example_plugin_env):
    out = tmp_path / "grid.png"
    code, stdout, _ = cli(
        capsys,
        "sample",
        "tiny_autoencoder",
        "--run",
        str(trained_run),
        "--n",
        "4",
        "--seed",
        "3",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert code == 0 and out.is_file()
    first = np.asarray(Image.open(out))
    cli(capsys, "sample", "tiny_autoencoder", "--run", str(trained_run), "--n", "4", "--seed", "3", "--out", str(out))
    assert np.array_equal(first, np.asarray(Image.open(out))), "same seed, same grid"
    code, stdout, _ = cli(capsys, "eval", "tiny_autoencoder", "--run", str(trained_run), "--json")
    assert code == 0 and json.loads(stdout)["psnr"] > 10
    code, stdout, _ = cli(capsys, "info", "--run", str(trained_run))
    assert json.loads(stdout)["config"]["steps"] == 120


def test_python_api(trained_run, example_plugin_env):
    importlib.import_module("zoo.trainer")  # a submodule must not shadow the API function
    assert zoo.train is zoo.api.train
    assert "tiny_autoencoder" in zoo.list_models()
    plugin, config, model = zoo.create_model("tiny_autoencoder", preset="fast", width=8)
    assert config.width == 8 and model.encoder[0].out_channels == 8
    run = zoo.load_run(trained_run)
    output = run.sample(n=3, seed=0)
    assert output.images.shape == (3, 16, 16, 3) and output.images.dtype == np.uint8
    assert set(run.evaluate()) == {"mse", "psnr"}


def test_listing_and_info(capsys, example_plugin_env):
    code, stdout, _ = cli(capsys, "list", "--json")
    [row] = [r for r in json.loads(stdout) if r["name"] == "tiny_autoencoder"]
    assert row["stages"] == ["autoencoder"] and row["components"] == ["encoder", "decoder"]
    assert row["presets"] == ["digits16", "fast"] and row["source"] == "entry point zoo-tiny-autoencoder"
    code, stdout, _ = cli(capsys, "info", "tiny_autoencoder")
    assert (
        "codebook_size: int = 32  number of codes in the codebook" in stdout
        and "autoencoder: 300 steps, batch 32" in stdout
    )
    code, stdout, _ = cli(capsys, "sample", "tiny_autoencoder", "--help")
    assert "--n N" in stdout and "number of images" in stdout


def test_plugins_json_reports_failures(capsys, example_plugin_env, tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('needs a library that is missing')\n")
    (tmp_path / "reg.yaml").write_text("plugins: [broken.py]\n")
    code, stdout, _ = cli(capsys, "--registry", str(tmp_path / "reg.yaml"), "plugins", "--json")
    infos = {i["name"]: i for i in json.loads(stdout)}
    assert infos["zoo_tiny_autoencoder.plugin"]["error"] is None
    assert "needs a library" in infos[str(tmp_path / "broken.py")]["error"]
    code, _, stderr = cli(capsys, "--registry", str(tmp_path / "reg.yaml"), "--strict", "list")
    assert code == 1 and "needs a library" in stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "tiny_autoencodr"], "unknown model 'tiny_autoencodr'. Did you mean 'tiny_autoencoder'?"),
        (["train", "tiny_autoencoder", "--preset", "fsat"], "Did you mean 'fast'?"),
        (
            ["train", "tiny_autoencoder", "--set", "codebook_size=many"],
            "config field 'codebook_size': Input should be a valid integer",
        ),
        (["sample", "tiny_autoencoder", "--run", "/nonexistent"], "is not a run directory"),
    ],
)
def test_user_errors_are_one_line(capsys, example_plugin_env, args, message):
    code, _, stderr = cli(capsys, *args)
    assert code == 1 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_checkpoint_of_another_model_and_corrupt_weights(trained_run, tmp_path, capsys, example_plugin_env):
    code, _, stderr = cli(capsys, "eval", "var", "--run", str(trained_run))
    assert code == 1 and "holds a 'tiny_autoencoder' run, not 'var'" in stderr
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, stderr = cli(capsys, "eval", "tiny_autoencoder", "--run", str(broken))
    assert code == 1 and "not a readable safetensors file" in stderr


def _example_env(example_site) -> dict:
    import os

    from tests.conftest import EXAMPLE

    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(example_site)]),
        "ZOO_LOAD_PLUGINS": "tiny_autoencoder",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
def test_nproc_per_node_launches_torchrun_and_matches_one_process(tmp_path, example_site):
    from zoo.checkpoint import load_tensors

    common = [
        "train",
        "tiny_autoencoder",
        "--preset",
        "fast",
        "--set",
        "steps=6",
        "--set",
        "batch_size=8",
        "--quiet",
        "--device",
        "cpu",
    ]
    env = _example_env(example_site)
    for name, extra in (("one", []), ("two", ["--nproc-per-node", "2"])):
        result = subprocess.run(
            zoo_command(*common, "--out", str(tmp_path / name), *extra),
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
    one, two = (load_tensors(tmp_path / n / "model.safetensors") for n in ("one", "two"))
    for key in one:
        np.testing.assert_allclose(one[key].numpy(), two[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


def test_json_progress_mode(tmp_path, example_site):
    result = subprocess.run(
        zoo_command(
            "train",
            "tiny_autoencoder",
            "--preset",
            "fast",
            "--set",
            "steps=20",
            "--out",
            str(tmp_path / "run"),
            "--json",
            "--device",
            "cpu",
        ),
        capture_output=True,
        text=True,
        env=_example_env(example_site),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert events[0] == {"event": "stage_start", "stage": "autoencoder", "total": 20, "done": 0}
    assert [e["step"] for e in steps] == [10, 20] and all(e["images_per_s"] > 0 for e in steps)


def test_export_then_run_without_torch_matches_sample(
    trained_run, tmp_path, capsys, example_plugin_env, example_site, monkeypatch
):
    from zoo.registry import reset_registry

    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "tiny_autoencoder,zoo_onnx")  # the ONNX exporter is a plugin too
    reset_registry()
    code, stdout, stderr = cli(
        capsys, "export", "tiny_autoencoder", "--run", str(trained_run), "--out", str(tmp_path / "export")
    )
    assert code == 0, stderr
    assert "decoder" in stdout and "max abs error" in stdout and (tmp_path / "export" / "manifest.json").is_file()
    cli(
        capsys,
        "sample",
        "tiny_autoencoder",
        "--run",
        str(trained_run),
        "--n",
        "4",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "torch.png"),
        "--device",
        "cpu",
    )

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = _example_env(example_site)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), env["PYTHONPATH"]])
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "torch is blocked" in probe.stderr
    result = subprocess.run(
        zoo_command("run", str(tmp_path / "export"), "--n", "4", "--seed", "3", "--out", str(tmp_path / "onnx.png")),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    onnx_image = np.asarray(Image.open(tmp_path / "onnx.png")).astype(int)
    torch_image = np.asarray(Image.open(tmp_path / "torch.png")).astype(int)
    assert np.abs(onnx_image - torch_image).max() <= 1  # uint8 rounding of fp32 differences

    result = subprocess.run(
        zoo_command("run", str(tmp_path / "export"), "--n", "0"), capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1 and "sample option 'n'" in result.stderr


PRIORS = [
    f"{prior}_{part}" for prior in ("prior_top", "prior_bottom") for part in ("condition", "logits", "row", "step")
]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("var", ["encoder", "decoder", "embed_0", "embed_1", "embed_2", "embed_3", "transformer_step"]),  # a scale each
        ("vqvae2_pixelcnn", ["encoder", "decoder", *PRIORS]),
        ("quantart", ["photo_encoder", "art_encoder", "transfer", "art_decoder", "stylize"]),
        ("multimodal_caption", ["image_encoder", "image_decoder", "text_encoder", "text_decoder_step"]),
    ],
)
def test_listed_components_are_the_exported_ones(name, expected):
    from zoo.registry import Registry

    plugin = Registry(strict=True).get(name)
    _, config, model = zoo.create_model(name)
    assert plugin.component_names(config) == expected  # derived on the meta device, no weights
    assert [component.name for component in plugin.export_components(model, config)] == expected
