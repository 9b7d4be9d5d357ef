"""The CLI and the Python API, end to end on the example plugin (found via its entry point)."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import zoo
import zoo.api
from tests.conftest import BLOCK_TORCH, cli, zoo_command
from tests.tolerances import EPS32, assert_same_training


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
            "--set",
            "sample_every=40",
            "--out",
            str(run_dir),
            "--log-every-seconds",
            "0.001",
            "--tensorboard",
            "--device",
            "cpu",
        ),
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    # piped: plain lines, read by test_piped_training_prints_plain_lines_and_a_summary below
    (run_dir.parent / "train_stdout.txt").write_text(result.stdout)
    assert f"grid: {run_dir}/samples/autoencoder.png" in result.stdout
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
    assert record["model"] == "tiny_autoencoder"
    assert record["preset"] == "fast"
    assert record["config"]["steps"] == 120
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
    assert code == 0
    assert out.is_file()
    first = np.asarray(Image.open(out))
    cli(capsys, "sample", "tiny_autoencoder", "--run", str(trained_run), "--n", "4", "--seed", "3", "--out", str(out))
    assert np.array_equal(first, np.asarray(Image.open(out))), "same seed, same grid"
    code, stdout, _ = cli(capsys, "eval", "tiny_autoencoder", "--run", str(trained_run), "--json")
    assert code == 0
    assert json.loads(stdout)["psnr"] > 10
    code, stdout, _ = cli(capsys, "info", "--run", str(trained_run))
    assert json.loads(stdout)["config"]["steps"] == 120


def test_python_api(trained_run, example_plugin_env):
    importlib.import_module("zoo.trainer")  # a submodule must not shadow the API function
    assert zoo.train is zoo.api.train
    assert "tiny_autoencoder" in zoo.list_models()
    plugin, config, model = zoo.create_model("tiny_autoencoder", preset="fast", width=8)
    assert config.width == 8
    assert model.encoder[0].out_channels == 8
    run = zoo.load_run(trained_run)
    output = run.sample(n=3, seed=0)
    # three held-out digits above their three reconstructions, one column each
    assert output.images.shape == (6, 16, 16, 3)
    assert output.images.dtype == np.uint8
    assert output.columns == 3
    assert set(run.evaluate()) == {"mse", "psnr"}


def test_listing_and_info(capsys, example_plugin_env):
    code, stdout, _ = cli(capsys, "list", "--json")
    [row] = [r for r in json.loads(stdout) if r["name"] == "tiny_autoencoder"]
    assert row["stages"] == ["autoencoder"]
    assert row["components"] == ["encoder", "decoder"]
    assert row["presets"] == ["digits16", "fast"]
    assert row["source"] == "entry point zoo-tiny-autoencoder"
    code, stdout, _ = cli(capsys, "info", "tiny_autoencoder")
    assert "codebook_size: int = 32  number of codes in the codebook" in stdout
    assert "autoencoder: 300 steps, batch 32" in stdout
    code, stdout, _ = cli(capsys, "sample", "tiny_autoencoder", "--help")
    assert "--n N" in stdout
    assert "held-out digits to reconstruct" in stdout
    assert "(default: 8)" in stdout


def test_plugins_json_reports_failures(capsys, example_plugin_env, tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('needs a library that is missing')\n")
    (tmp_path / "reg.yaml").write_text("plugins: [broken.py]\n")
    code, stdout, _ = cli(capsys, "--registry", str(tmp_path / "reg.yaml"), "plugins", "--json")
    infos = {i["name"]: i for i in json.loads(stdout)}
    assert infos["zoo_tiny_autoencoder.plugin"]["error"] is None
    assert "needs a library" in infos[str(tmp_path / "broken.py")]["error"]
    code, _, stderr = cli(capsys, "--registry", str(tmp_path / "reg.yaml"), "--strict", "list")
    assert code == 1, stderr
    assert "needs a library" in stderr


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
    assert code == 1, stderr
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_checkpoint_of_another_model_and_corrupt_weights(trained_run, tmp_path, capsys, example_plugin_env):
    code, _, stderr = cli(capsys, "eval", "var", "--run", str(trained_run))
    assert code == 1, stderr
    assert "holds a 'tiny_autoencoder' run, not 'var'" in stderr
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, stderr = cli(capsys, "eval", "tiny_autoencoder", "--run", str(broken))
    assert code == 1, stderr
    assert "not a readable safetensors file" in stderr


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
    assert_same_training(one, two, steps=6)  # within rounding: all-reduce adds in its own order


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
    assert [e["step"] for e in steps] == [10, 20]
    assert all(e["images_per_s"] > 0 for e in steps)
    [end] = [e for e in events if e["event"] == "stage_end"]
    assert end["stage"] == "autoencoder"
    assert end["seconds"] > 0
    assert end["metrics"]["loss"] == steps[-1]["loss"]
    assert events[-1]["event"] == "done"
    assert events[-1]["run_dir"] == str(tmp_path / "run")
    assert events[-1]["metrics"]["mse"] == steps[-1]["mse"]
    assert events[-1]["stages"]["autoencoder"]["steps"] == 20


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
    assert "decoder" in stdout
    assert "max abs error" in stdout
    assert (tmp_path / "export" / "manifest.json").is_file()
    assert stdout.startswith("exporting tiny_autoencoder (encoder, decoder) to ")  # not a silent minute
    # --json, with the flags before MODEL
    code, stdout, stderr = cli(
        capsys, "export", "--out", str(tmp_path / "export2"), "--json", "--run", str(trained_run), "tiny_autoencoder"
    )
    assert code == 0, stderr
    written = json.loads(stdout)
    assert written["export_dir"] == str(tmp_path / "export2")
    assert set(written["manifest"]["components"]) == {"encoder", "decoder"}
    # the report shows the export's validation errors against torch, per component
    code, _, stderr = cli(
        capsys, "report", str(trained_run), "--export", str(tmp_path / "export"), "--out", str(tmp_path / "r.html")
    )
    assert code == 0, stderr
    page = ReportPage.parse(tmp_path / "r.html")
    assert f"export {tmp_path / 'export'}" in page.headings
    row = page.cells[page.cells.index("decoder") : page.cells.index("decoder") + 4]
    assert row[1] == "fp32", row
    assert re.search(r"max_abs_error \S+", row[3]), row
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
    assert probe.returncode != 0, probe.stderr
    assert "torch is blocked" in probe.stderr
    # zoo run's own flags after EXPORT_DIR and among the model's options, as the README shows them
    result = subprocess.run(
        zoo_command(
            "run",
            str(tmp_path / "export"),
            "--n",
            "4",
            "--threads",
            "1",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "onnx.png"),
            "--provider",
            "cpu",
            "--json",
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"out": str(tmp_path / "onnx.png"), "texts": None, "images": 8}
    onnx_image = np.asarray(Image.open(tmp_path / "onnx.png")).astype(int)
    torch_image = np.asarray(Image.open(tmp_path / "torch.png")).astype(int)
    assert np.abs(onnx_image - torch_image).max() <= 1  # uint8 rounding of fp32 differences

    result = subprocess.run(
        zoo_command("run", str(tmp_path / "export"), "--n", "0"), capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "sample option 'n'" in result.stderr


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


# seeing training (issue 14) ----------------------------------------------------------------


def test_piped_training_prints_plain_lines_and_a_summary(trained_run):
    stdout = (trained_run.parent / "train_stdout.txt").read_text()
    lines = stdout.splitlines()
    progress = [
        line for line in lines if re.match(r"autoencoder \d+/120 \(\d+%\) \d+ img/s ETA \S+ loss \S+ mse", line)
    ]
    assert len(progress) >= 3, stdout  # --log-every-seconds 0.001: a line per logged step
    assert progress[-1].startswith("autoencoder 120/120 (100%)")
    assert " lr " in progress[-1]
    assert "\x1b[" not in stdout, "no terminal escapes in a pipe"
    assert re.search(r"^autoencoder: done in \S+: loss ", stdout, re.MULTILINE)
    # the summary: per stage time and metrics, then the next commands, each on one unwrapped line
    run = str(trained_run)
    assert f"run directory: {run}" in lines
    assert f"  zoo sample tiny_autoencoder --run {run} --out tiny_autoencoder_sample.png" in lines
    assert f"  zoo export tiny_autoencoder --run {run} --out exports/ae" in lines
    assert f"  zoo report {run} --out {run}/report.html" in lines
    assert f"  zoo eval tiny_autoencoder --run {run}" in lines
    assert any(line.startswith("  autoencoder ") and "120 steps  loss " in line for line in lines)


def test_every_stage_writes_its_grid_at_the_end_and_every_sample_every_steps(trained_run):
    samples = trained_run / "samples"
    assert sorted(p.name for p in (samples / "autoencoder").iterdir()) == ["step_40.png", "step_80.png"]
    final = Image.open(samples / "autoencoder.png")
    step = Image.open(samples / "autoencoder" / "step_40.png")
    # 8 held-out digits above their reconstructions: 2 rows of 8 (16px digits shown at 64px, 2px borders)
    assert final.size == step.size == (8 * 66 + 2, 2 * 66 + 2)


def test_tensorboard_holds_the_scalars_and_grids(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"autoencoder/loss", "autoencoder/mse", "autoencoder/lr", "autoencoder/images_per_s"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("autoencoder/loss")] == list(range(10, 121, 10))
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if m.get("step") == 120 and "loss" in m][0]
    # TensorBoard stores float32: one rounding of the float64 in metrics.jsonl, eps/2 relative
    assert events.Scalars("autoencoder/loss")[-1].value == pytest.approx(last["loss"], rel=EPS32 / 2)
    assert [e.step for e in events.Images("autoencoder/grid")] == [40, 80, 120]


def test_the_run_records_its_sessions(trained_run):
    record = json.loads((trained_run / "config.json").read_text())
    [session] = record["sessions"]
    assert session["status"] == "finished"
    assert session["started"] <= session["ended"]
    assert session["command"][:3] == ["zoo", "train", "tiny_autoencoder"]
    assert "--tensorboard" in session["command"]
    assert session["device"] == "cpu"
    assert session["precision"] == "fp32"
    assert set(session["versions"]) == {"python", "torch", "zoo", "plugin"}


def test_report_of_a_run_and_a_comparison(trained_run, tmp_path, capsys, example_plugin_env):
    import shutil

    (trained_run / "eval.json").write_text(json.dumps({"mse": 0.05, "psnr": 19.1}))
    out = tmp_path / "report.html"
    code, stdout, stderr = cli(capsys, "report", str(trained_run), "--out", str(out))
    assert code == 0, stderr
    assert stdout.strip() == f"wrote {out}", stderr
    page = ReportPage.parse(out)
    assert page.headings[:1] == [f"tiny_autoencoder run {trained_run}"]
    assert "stage autoencoder" in page.headings
    assert "evaluation (eval.json)" in page.headings
    assert {"losses", "learning rate", "codebook", "throughput (images/s)"} <= set(page.plots)
    assert page.images == ["step 40", "step 80", "end of stage"]  # every grid, embedded
    assert all(src.startswith("data:image/png;base64,") for src in page.sources)
    assert "psnr" in page.cells
    assert "19.1" in page.cells
    assert "finished" in page.cells
    assert any("--tensorboard" in cell for cell in page.cells)  # the command line
    assert '"sample_every": 40' in page.text  # the resolved config
    assert 'src="http' not in out.read_text()
    assert 'href="http' not in out.read_text()  # self-contained

    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    record = json.loads((other / "config.json").read_text())
    record["config"]["lr"] = 0.01
    (other / "config.json").write_text(json.dumps(record))
    compare = tmp_path / "compare.html"
    code, _, stderr = cli(capsys, "report", str(trained_run), str(other), "--out", str(compare), "--json")
    assert code == 0, stderr
    page = ReportPage.parse(compare)
    assert "config differences" in page.headings
    row = page.cells[page.cells.index("lr") : page.cells.index("lr") + 3]
    assert row == ["lr", "0.002", "0.01"]
    assert "autoencoder loss" in page.cells
    assert "eval psnr" in page.cells
    assert page.text.count(str(other)) >= 2  # a legend entry per run in the overlaid curves
    _screenshot(out)


class ReportPage(HTMLParser):
    """What a report shows: headings, plot titles, image captions, table cells, text."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.plots: list[str] = []
        self.images: list[str] = []
        self.sources: list[str] = []
        self.cells: list[str] = []
        self.text = ""
        self._tag = ""

    @classmethod
    def parse(cls, path) -> ReportPage:
        page = cls()
        page.feed(path.read_text())
        return page

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self._tag = tag
        if tag == "figure" and attributes.get("class") == "plot":
            self.plots.append(attributes["data-title"])
        if tag == "img":
            self.images.append(attributes["alt"])
            self.sources.append(attributes["src"])

    def handle_data(self, data):
        self.text += data
        if self._tag in ("h1", "h2"):
            self.headings.append(data)
        elif self._tag in ("td", "th"):
            self.cells.append(data)

    def handle_endtag(self, tag):
        self._tag = ""


def _screenshot(page) -> None:
    """Render the page with headless Chromium, where installed; the picture must not be blank."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return
    png = page.with_suffix(".png")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,2000",
            f"--screenshot={png}",
            f"file://{page}",
        ],
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.std() > 10  # text, plots and grids, not an empty page


def test_resume_takes_the_run_config_and_names_what_differs(trained_run, tmp_path, capsys, example_plugin_env):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # no MODEL, no --preset, no --set: the stored config is used, nothing is blamed
    code, stdout, stderr = cli(capsys, "train", "--resume", "--out", str(run), "--quiet")
    assert code == 0, stderr
    assert f"run directory: {run}" in stdout, stderr
    code, _, stderr = cli(capsys, "train", "tiny_autoencoder", "--resume", "--out", str(run), "--set", "steps=121")
    assert code == 1, stderr
    assert "steps: the run has 120, this command gives 121" in stderr
    assert "--out" in stderr
    assert "resume=True" not in stderr
    assert "run_dir" not in stderr
    # without --resume: the CLI names the flag, the API the argument
    code, _, stderr = cli(capsys, "train", "tiny_autoencoder", "--out", str(run))
    assert code == 1, stderr
    assert "--resume" in stderr
    assert "resume=True" not in stderr
    with pytest.raises(zoo.ZooError) as raised:
        zoo.train("tiny_autoencoder", run_dir=run)
    assert "resume=True" in str(raised.value)
    assert "--resume" not in str(raised.value)
    with pytest.raises(zoo.ZooError, match="steps: the run has 120, this call gives 7") as raised:
        zoo.train(run_dir=run, resume=True, overrides={"steps": 7})
    assert "--" not in str(raised.value)
    assert zoo.train(run_dir=run, resume=True).config.steps == 120


def test_sample_json_flags_anywhere_and_early_errors(trained_run, tmp_path, capsys, example_plugin_env, monkeypatch):
    out = tmp_path / "s.png"
    code, stdout, stderr = cli(
        capsys, "sample", "--run", str(trained_run), "--json", "tiny_autoencoder", "--n", "3", "--out", str(out)
    )
    assert code == 0, stderr
    assert json.loads(stdout) == {"out": str(out), "texts": None, "images": 6}, stderr
    # an --out Pillow cannot write is refused before any sampling
    from zoo.registry import get_registry

    plugin = get_registry().get("tiny_autoencoder")
    monkeypatch.setattr(type(plugin), "sample", lambda *args: pytest.fail("sampled before checking --out"))
    code, _, stderr = cli(capsys, "sample", "tiny_autoencoder", "--run", str(trained_run), "--out", "grid.xyz")
    assert code == 1, stderr
    assert "'.xyz'" in stderr
    assert len(stderr.splitlines()) == 1
    code, _, stderr = cli(capsys, "run", str(tmp_path / "no-export"), "--out", "grid.xyz")
    assert code == 1, stderr
    assert "'.xyz'" in stderr  # before the export directory is even read
    code, _, stderr = cli(capsys, "eval", "tiny_autoencoder", "--run", str(tmp_path / "nothing"))
    assert code == 1, stderr
    assert f"`zoo train tiny_autoencoder --out {tmp_path / 'nothing'}`" in stderr


def test_the_example_samples_recognisable_reconstructions(trained_run, example_plugin_env):
    from zoo.data import digits
    from zoo.outputs import to_uint8

    output = zoo.load_run(trained_run).sample(n=8, seed=1)
    held_out = np.stack([digits(16, "test")[i]["image"].numpy() for i in range(64)])
    chosen = np.sort(np.random.default_rng(1).choice(64, size=8, replace=False))
    np.testing.assert_array_equal(output.images[:8], to_uint8(held_out[chosen]))  # top row: the digits
    inputs, reconstructions = output.images[:8].astype(float), output.images[8:].astype(float)
    own = np.abs(reconstructions - inputs).mean()
    others = np.mean([np.abs(reconstructions - np.roll(inputs, k, axis=0)).mean() for k in range(1, 8)])
    assert own < 0.85 * others, "each reconstruction looks like its own digit more than the others"


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(tmp_path, example_site):
    import signal
    import time

    run = tmp_path / "run"
    command = zoo_command(
        "train",
        "tiny_autoencoder",
        "--preset",
        "fast",
        "--set",
        "steps=100000",
        "--out",
        str(run),
        "--checkpoint-every",
        "5",
        "--device",
        "cpu",
        "--quiet",
    )
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_example_env(example_site)
    )
    deadline = time.monotonic() + 240
    while not (run / "state" / "latest.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    match = re.search(r"the last checkpoint is at stage autoencoder, step (\d+)\. Resume with:\n  (.*)", stderr)
    assert match, stderr
    assert int(match.group(1)) % 5 == 0, stderr
    assert (
        match.group(2) == f"zoo train tiny_autoencoder --resume --out {run} --device cpu --checkpoint-every 5 --quiet"
    )
    assert json.loads((run / "config.json").read_text())["sessions"][-1]["status"] == "interrupted"
