"""Faults of exporting and of loading an export: an export that deletes what it must not,
a kill mid-replacement, an export directory that tries to run code, tampered or unsigned
manifests, wrong modes and opsets, image bombs handed to a sampling loop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import zoo.runtime
from tests.conftest import ROOT, zoo_command
from tests.exporter.conftest import tiny, tiny_runtime_installed  # noqa: F401  (fixtures)
from tests.exporter.tiny_export_plugin import TorchScriptTinyPlugin
from zoo import temporary
from zoo.errors import ConfigError, DataError, ExportError
from zoo.runtime.images import open_image
from zoo.runtime.manifest import read_manifest, verify_files
from zoo.runtime.signing import generate_key_pair
from zoo_onnx import export_model
from zoo_onnx.export import ASIDE, check_destination, recover_destination, replace_directory, written_opset


@pytest.fixture(scope="module")
def ts_export(tiny, tmp_path_factory):  # noqa: F811
    """A TorchScript export of the tiny plugin (seconds, not tens of seconds), made under umask 022."""
    _, config, model = tiny
    out_dir = tmp_path_factory.mktemp("ts") / "tiny"
    previous = os.umask(0o022)
    try:
        export_model(TorchScriptTinyPlugin(), model, config, out_dir)
    finally:
        os.umask(previous)
    return out_dir


@pytest.fixture
def copy(ts_export, tmp_path) -> Path:
    target = tmp_path / "tiny"
    shutil.copytree(ts_export, target)
    return target


def edit_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def complete_export(directory: Path) -> bool:
    try:
        verify_files(directory, read_manifest(directory))
    except ExportError:
        return False
    return True


# item 1: what an export may replace, and a kill in the middle --------------------------


def test_a_directory_with_a_foreign_manifest_json_is_refused_and_kept(tiny, tmp_path):  # noqa: F811
    _, config, model = tiny
    web_app = tmp_path / "site"
    web_app.mkdir()
    (web_app / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
    (web_app / "index.html").write_text("<html></html>")
    with pytest.raises(ExportError, match="exists and is not an export directory") as error:
        export_model(TorchScriptTinyPlugin(), model, config, web_app, components=["decode"])
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in web_app.iterdir()) == ["index.html", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # nothing staged beside it either


def set_aside(directory: Path, stem: str, kind: str = "") -> Path:
    """What a kill leaves: a recorded name (zoo.temporary) holding `directory`."""
    name = temporary.new_name(stem, kind)
    temporary.record(directory.parent, name)
    directory.rename(directory.parent / name)
    return directory.parent / name


def test_an_export_set_aside_by_a_killed_replacement_is_put_back(copy):
    # the state a kill between "old export aside" and "new export in" leaves (no renameat2)
    aside = set_aside(copy, f".{copy.name}", ASIDE)
    recover_destination(copy)
    assert complete_export(copy)
    assert not aside.exists()
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]  # the register went with its names


def test_recorded_leftovers_are_removed_but_lookalikes_are_not(copy):
    stale_aside = copy.with_name("stale")
    shutil.copytree(copy, stale_aside)
    stale_aside = set_aside(stale_aside, f".{copy.name}", ASIDE)
    partial = copy.with_name("partial")
    partial.mkdir()
    (partial / "decode.onnx").write_bytes(b"half written")
    partial = set_aside(partial, f".{copy.name}")
    lookalikes = [f".{copy.name}.previous-0123abcd", f".{copy.name}.partial-x1y2z3w4", f".{copy.name}.zoo-0123abcd"]
    for name in lookalikes:
        (copy.parent / name).mkdir()
        (copy.parent / name / "mine.txt").write_text("not recorded: never removed")
    recover_destination(copy)
    assert complete_export(copy)
    assert sorted(p.name for p in copy.parent.iterdir()) == sorted([copy.name, *lookalikes])


def test_recorded_names_of_two_destinations_are_never_confused(tmp_path):
    """The old export of `tiny` set aside and the staging folder of an export to
    `tiny.previous` have distinct names: recovering one never picks up the other."""
    for stem, kind in [(".tiny", ASIDE), (".tiny.previous", ""), (".tiny", "")]:
        temporary.record(tmp_path, temporary.new_name(stem, kind))
    assert [name[:-9] for name in temporary.recorded(tmp_path, ".tiny", ASIDE)] == [".tiny.zoo-previous"]
    assert [name[:-9] for name in temporary.recorded(tmp_path, ".tiny")] == [".tiny.zoo"]
    assert [name[:-9] for name in temporary.recorded(tmp_path, ".tiny.previous")] == [".tiny.previous.zoo"]


def test_replacing_an_export_keeps_files_a_user_added_by_refusing(copy):
    (copy / "notes.txt").write_text("mine")
    (copy / "files").mkdir(exist_ok=True)
    (copy / "files" / "extra.bin").write_bytes(b"mine too")
    with pytest.raises(ExportError, match=r"holds files the export did not write \(files/extra.bin, notes.txt\)"):
        check_destination(copy)
    assert (copy / "notes.txt").read_text() == "mine"


def test_re_exporting_over_an_export_with_a_user_file_changes_nothing(tiny, tmp_path):  # noqa: F811
    _, config, model = tiny
    out = tmp_path / "export"
    export_model(TorchScriptTinyPlugin(), model, config, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="holds files the export did not write"):
        export_model(TorchScriptTinyPlugin(), model, config, out)
    assert (out / "notes.txt").read_text() == "mine"
    assert complete_export(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 RENAME_EXCHANGE is Linux's")
def test_the_export_directory_exists_at_every_instant_of_a_replacement(copy, tmp_path):
    """The swap is one renameat2(RENAME_EXCHANGE): a reader never finds --out missing."""
    stop = threading.Event()
    missing = []

    def watch() -> None:
        while not stop.is_set():
            if not os.path.isfile(copy / "manifest.json"):
                missing.append(time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(200):
            staging = tmp_path / "staging"
            shutil.copytree(copy, staging)
            replace_directory(staging, copy)
            shutil.rmtree(staging)  # the old export, swapped out
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    assert complete_export(copy)


def test_an_empty_component_list_is_refused(tiny, tmp_path):  # noqa: F811
    _, config, model = tiny
    with pytest.raises(ConfigError, match="name at least one component"):
        export_model(TorchScriptTinyPlugin(), model, config, tmp_path / "export", components=[])
    assert not (tmp_path / "export").exists()


KILL_DRIVER = """
import json, os, random, signal, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from tests.exporter.tiny_export_plugin import TorchScriptTinyPlugin
from zoo.errors import ExportError
from zoo.runtime.manifest import read_manifest, verify_files
from zoo_onnx import export_model
import zoo_onnx.export
from zoo_onnx.export import recover_destination

if {two_renames}:  # the fallback where renameat2 cannot swap
    zoo_onnx.export.exchange = lambda first, second: False
out = Path({out!r})
plugin = TorchScriptTinyPlugin()
config = plugin.Config()
model = plugin.build(config)

def export():
    export_model(plugin, model, config, out)

started = time.monotonic()
export()  # the old export, and the time one export takes
duration = time.monotonic() - started
random.seed(0)
results = []
for _ in range({kills}):
    child = os.fork()
    if child == 0:  # the child exports over the old export until it is killed
        try:
            export()
        finally:
            os._exit(0)
    time.sleep(random.uniform(0, duration))
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    recover_destination(out)  # what the next export does first
    try:
        verify_files(out, read_manifest(out))
        results.append("complete")
    except ExportError as error:
        results.append(str(error))
export()
print(json.dumps({{"results": results, "duration": duration}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("two_renames", [False, True], ids=["renameat2", "two-renames"])
def test_sigkill_at_random_moments_always_leaves_a_complete_export(tmp_path, two_renames):
    """Forked exports are killed at random moments of an export (the driver imports torch
    once, so each kill costs a fraction of an export, not a torch start)."""
    out = tmp_path / "tiny"
    script = KILL_DRIVER.format(root=str(ROOT), out=str(out), kills=7, two_renames=two_renames)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["results"] == ["complete"] * 7
    assert complete_export(out)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no aside, partial or register left


# item 2: an export directory runs no code -----------------------------------------------


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_manifest_module_path_is_never_imported(copy):
    edit_manifest(copy, runtime="this:s", options="this:s")
    code = textwrap.dedent("""
        import sys, zoo.runtime
        loaded = zoo.runtime.load(".")
        assert "this" not in sys.modules, "the manifest's module was imported"
        print(type(loaded.runtime).__name__)
    """)
    result = run_python(code, copy)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "TinyRuntime"  # found by model name; `this` would print the Zen


EVIL = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


@pytest.mark.parametrize("how", ["python -m zoo run .", "zoo.runtime.load"])
def test_an_export_directory_holding_a_module_is_refused_and_the_module_not_executed(copy, tmp_path, how):
    marker = tmp_path / "marker"
    (copy / "evil.py").write_text(EVIL.format(marker=str(marker)))
    edit_manifest(copy, runtime="evil:Loop", options="evil:Options")
    if how == "zoo.runtime.load":
        result = run_python("import zoo.runtime; zoo.runtime.load('.')", copy)
    else:
        result = subprocess.run(
            zoo_command("run", ".", "--count", "1", "--out", str(tmp_path / "x.png")),
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0, result.stderr[-2000:]
    assert "holds Python code (evil.py), which no export carries" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pyc", ".so", "/__init__.py"])
def test_compiled_modules_and_packages_in_an_export_are_refused(copy, suffix):
    path = copy / f"numpy{suffix}"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"")
    with pytest.raises(ExportError, match="holds Python code"):
        zoo.runtime.load(copy)


def test_python_dash_p_runs_an_export_holding_a_shadowing_module_without_importing_it(copy, tmp_path):
    """`python -m zoo run .` imports the directory's numpy.py before zoo can drop the working
    directory from sys.path; `python -P` (or the `zoo` console script) never puts it there."""
    marker = tmp_path / "marker"
    (copy / "numpy.py").write_text(EVIL.format(marker=str(marker)))
    result = subprocess.run(
        [sys.executable, "-P", "-m", "zoo", "run", ".", "--out", str(tmp_path / "x.png")],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "holds Python code (numpy.py)" in result.stderr
    assert not marker.exists()


def test_a_package_in_the_export_directory_that_shadows_the_runtime_is_refused(copy, tmp_path):
    """The tiny runtime lives in package `tests`; a `tests/` in the export directory would
    be imported instead when the directory is first on sys.path (`python -c` from there)."""
    marker = tmp_path / "marker"
    (copy / "tests").mkdir()
    (copy / "tests" / "__init__.py").write_text(EVIL.format(marker=str(marker)))
    result = run_python("import zoo.runtime; zoo.runtime.load('.')", copy)
    assert result.returncode != 0, result.stderr
    assert not marker.exists()
    assert "holds Python code (tests/__init__.py)" in result.stderr


def test_python_m_zoo_drops_the_working_directory_from_sys_path(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "onnxruntime.py").write_text(EVIL.format(marker=str(marker)))  # `zoo run` imports onnxruntime
    result = subprocess.run(
        zoo_command("run", str(tmp_path / "nowhere")), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert "does not exist" in result.stderr
    assert not marker.exists()


# signing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_export(tiny, tmp_path_factory):  # noqa: F811
    _, config, model = tiny
    root = tmp_path_factory.mktemp("signed")
    private, public = generate_key_pair(root / "key")
    out_dir = root / "export"
    export_model(TorchScriptTinyPlugin(), model, config, out_dir, components=["decode"], sign_key=private)
    return out_dir, private, public


def test_a_signed_export_loads_with_its_key(signed_export):
    out_dir, private, public = signed_export
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    loaded = zoo.runtime.load(out_dir, verify_key=public)
    assert loaded.model == "tiny"


def test_an_altered_manifest_with_a_valid_signature_file_is_refused(signed_export, tmp_path):
    out_dir, _, public = signed_export
    altered = tmp_path / "altered"
    shutil.copytree(out_dir, altered)
    edit_manifest(altered, config={**json.loads((altered / "manifest.json").read_text())["config"], "num_codes": 8})
    with pytest.raises(ExportError, match="manifest.sig does not match manifest.json") as error:
        zoo.runtime.load(altered, verify_key=public)
    assert "\n" not in str(error.value)


def test_a_missing_signature_or_another_key_is_refused(signed_export, tmp_path):
    out_dir, _, _ = signed_export
    _, other_public = generate_key_pair(tmp_path / "other")
    with pytest.raises(ExportError, match="does not match"):
        zoo.runtime.load(out_dir, verify_key=other_public)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(out_dir, unsigned)
    (unsigned / "manifest.sig").unlink()
    with pytest.raises(ExportError, match="has no manifest.sig: the export is unsigned"):
        zoo.runtime.load(unsigned, verify_key=other_public)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        zoo.runtime.load(out_dir, verify_key=out_dir / "manifest.json")


# item 6: tampered manifest entries --------------------------------------------------------


def _drop_sha256(directory: Path) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    del manifest["components"]["decode"]["sha256"]
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _replace_assets(directory: Path) -> None:
    (directory / "assets.safetensors").write_bytes(b"not safetensors at all")


TAMPERED = {
    "config not a dict": (
        lambda d: edit_manifest(d, config=[1, 2]),
        "entry 'config': Input should be a valid dictionary",
    ),
    "components a list": (
        lambda d: edit_manifest(d, components=["decode.onnx"]),
        "entry 'components': Input should be a valid dictionary",
    ),
    "component without sha256": (_drop_sha256, "entry 'components.decode.sha256': Field required"),
    "model not a string": (lambda d: edit_manifest(d, model=7), "entry 'model': Input should be a valid string"),
    "replaced assets file": (_replace_assets, "assets.safetensors is not a readable safetensors file"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_tampered_manifest_entries_are_one_line_errors(copy, case):
    tamper, message = TAMPERED[case]
    tamper(copy)
    with pytest.raises(ExportError, match=message) as error:
        zoo.runtime.load(copy, verify=False)  # even unverified: an error, not a KeyError
    assert "\n" not in str(error.value)


# items 8 and 9: file modes and opsets ---------------------------------------------------


def test_export_files_follow_the_umask(ts_export):
    paths = [ts_export, *ts_export.rglob("*")]
    modes = {str(p.relative_to(ts_export.parent)): oct(p.stat().st_mode & 0o777) for p in paths}
    expected = {str(p.relative_to(ts_export.parent)): "0o755" if p.is_dir() else "0o644" for p in paths}
    assert modes == expected
    assert "tiny/assets.safetensors" in modes


def test_an_unsupported_opset_is_refused_before_any_work(tiny, tmp_path):  # noqa: F811
    _, config, model = tiny

    class NoWork(TorchScriptTinyPlugin):
        def export_components(self, model, config):
            raise AssertionError("work started")

    with pytest.raises(ConfigError, match=r"^--opset 3 is not supported: the exporters write opsets 18 to 20"):
        export_model(NoWork(), model, config, tmp_path / "export", opset=3)
    assert not (tmp_path / "export").exists()


def test_the_manifest_records_the_graphs_real_opset(tiny, tmp_path):  # noqa: F811
    _, config, model = tiny
    manifest = export_model(
        TorchScriptTinyPlugin(), model, config, tmp_path / "export", opset=18, components=["decode"]
    )
    graph = onnx.load(str(tmp_path / "export" / "decode.onnx"))
    real = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
    assert manifest["opset"] == manifest["components"]["decode"]["opset"] == real == 18
    with pytest.raises(ExportError, match="'decode' was written at opset 18, not the requested 20"):
        written_opset({"decode": {"opset": 18}}, 20)


# item 5: images handed to a sampling loop -----------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """12000 x 12000 pixels (144 megapixels) in a few kilobytes."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (12000, 12000)).save(path)
    return path


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(bomb):
    assert bomb.stat().st_size < 100_000
    with pytest.raises(
        DataError,
        match=rf"^--image {bomb}: 12000x12000 is 144 megapixels, over the limit of 64; "
        "use a smaller image or raise \\$ZOO_MAX_IMAGE_PIXELS$",
    ):
        with open_image(bomb, "--image") as image:
            np.asarray(image.convert("RGB"))  # would allocate 432 MB


def test_a_plugin_loop_reads_images_through_the_limit(bomb, tmp_path, monkeypatch):
    from zoo_var.runtime import read_image

    with pytest.raises(DataError, match="--edit .* over the limit"):
        read_image(bomb, 16)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    assert read_image(small, 16).shape == (1, 3, 16, 16)
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(DataError, match="20x20 is 0 megapixels, over the limit of 0.0001"):
        read_image(small, 16)


def test_a_file_that_is_not_an_image_is_one_line_naming_it(tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("not an image")
    with pytest.raises(DataError, match=rf"^--content {fake}: not a readable image \(cannot identify image file"):
        with open_image(fake, "--content"):
            pass
