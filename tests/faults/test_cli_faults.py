"""The CLI under faults of the disk and of its arguments: one `error:` line and exit 1,
never a traceback, and an argument that dooms the result refused before the work."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.exporter.conftest import tiny_runtime_installed  # noqa: F401  (autouse fixture)
from tests.exporter.tiny_export_runtime import TinyRuntime
from zoo.registry import reset_registry


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err, err
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    assert message in err, err


@pytest.fixture
def tiny_cli(tmp_path, monkeypatch):
    """The CLI sees the tiny plugin (through a registry file) and no other."""
    registry = tmp_path / "registry.yaml"
    registry.write_text("plugins:\n  - tests.exporter.tiny_export_plugin\n")
    monkeypatch.setenv("ZOO_REGISTRY", str(registry))
    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "zoo_onnx")
    reset_registry()
    yield
    reset_registry()


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    from zoo import api

    out_dir = tmp_path_factory.mktemp("exports") / "tiny"
    registry = tmp_path_factory.mktemp("registry") / "registry.yaml"
    registry.write_text("plugins:\n  - tests.exporter.tiny_export_plugin\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_REGISTRY", str(registry))
        patch.setenv("ZOO_LOAD_PLUGINS", "zoo_onnx")
        reset_registry()
        api.load_run(tiny_run, device="cpu").export(out_dir)
    reset_registry()
    return out_dir


def mount_tmpfs(directory: Path, options: str) -> None:
    """A small or read-only file system of our own (root with CAP_SYS_ADMIN only)."""
    directory.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")


@pytest.fixture
def full_disk(tmp_path):
    disk = tmp_path / "full"
    mount_tmpfs(disk, "size=16k")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write in: chmod 0555, or as root (who ignores modes) a
    read-only tmpfs."""
    directory = tmp_path / "read_only"
    if os.geteuid() != 0:
        directory.mkdir()
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    mount_tmpfs(directory, "ro,size=16k")
    yield directory
    subprocess.run(["umount", str(directory)], check=True)


# output paths checked before the work ---------------------------------------------------


def test_sample_with_an_unsupported_extension_is_refused_before_loading(tiny_cli, tmp_path, capsys):
    # --run names no run directory: the --out error first shows nothing was loaded
    code, _, err = cli(capsys, "sample", "tiny", "--run", str(tmp_path / "no_run"), "--out", str(tmp_path / "x.txt"))
    assert_one_line_error(code, err, f"--out {tmp_path / 'x.txt'} has '.txt'; give an image file name ending in .png")


def test_run_with_an_unsupported_extension_is_refused_before_sampling(tiny_export, tmp_path, capsys, monkeypatch):
    def no_sampling(self, options):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(TinyRuntime, "sample", no_sampling)
    code, _, err = cli(capsys, "run", str(tiny_export), "--out", str(tmp_path / "grid"))
    assert_one_line_error(code, err, "has no extension; give an image file name")


def test_sample_to_a_directory_is_refused(tiny_cli, tiny_run, tmp_path, capsys):
    code, _, err = cli(capsys, "sample", "tiny", "--run", str(tiny_run), "--out", str(tmp_path))
    assert_one_line_error(
        code, err, f"--out {tmp_path} is a directory; give a file name such as {tmp_path / 'sample.png'}"
    )


def test_export_to_an_existing_file_is_refused(tiny_cli, tiny_run, tmp_path, capsys):
    (tmp_path / "export").write_text("a file")
    code, _, err = cli(capsys, "export", "tiny", "--run", str(tiny_run), "--out", str(tmp_path / "export"))
    assert_one_line_error(code, err, "is a file; choose a directory for --out")


def test_export_with_an_unsupported_opset_is_one_line(tiny_cli, tiny_run, tmp_path, capsys):
    code, _, err = cli(capsys, "export", "tiny", "--run", str(tiny_run), "--out", str(tmp_path / "e"), "--opset", "3")
    assert_one_line_error(code, err, "--opset 3 is not supported: the exporters write opsets 18 to 20 (default 20)")
    assert not (tmp_path / "e").exists()


# the disk: full, read-only, a file where a folder should be ------------------------------


def test_sample_to_a_full_disk_is_one_line(tiny_cli, tiny_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    out.symlink_to("/dev/full")  # every write: ENOSPC
    code, _, err = cli(capsys, "sample", "tiny", "--run", str(tiny_run), "--out", str(out))
    assert_one_line_error(code, err, f"cannot write {out}: No space left on device")


def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(tiny_cli, tiny_run, full_disk, capsys):
    out = full_disk / "export"
    code, _, err = cli(capsys, "export", "tiny", "--run", str(tiny_run), "--out", str(out))
    assert_one_line_error(code, err, f"cannot write {out}: No space left on device")
    assert list(full_disk.iterdir()) == []  # the partial export was removed


@pytest.mark.parametrize("command", ["sample", "export"])
def test_writing_to_a_read_only_place_is_one_line(tiny_cli, tiny_run, read_only_dir, capsys, command):
    out = read_only_dir / ("grid.png" if command == "sample" else "export")
    code, _, err = cli(capsys, command, "tiny", "--run", str(tiny_run), "--out", str(out))
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert_one_line_error(code, err, reason)
    assert str(read_only_dir) in err


def test_a_file_where_a_folder_should_be_is_one_line(tiny_cli, tiny_run, tmp_path, capsys):
    (tmp_path / "notes").write_text("a file")
    out = tmp_path / "notes" / "grid.png"
    code, _, err = cli(capsys, "sample", "tiny", "--run", str(tiny_run), "--out", str(out))
    assert_one_line_error(code, err, f"{tmp_path / 'notes'}: File exists")


# signing through the CLI ----------------------------------------------------------------


def test_keygen_sign_and_verify(tiny_cli, tiny_run, tmp_path, capsys):
    code, out, err = cli(capsys, "keygen", "--out", str(tmp_path / "key"))
    assert code == 0, err
    assert "private key" in out
    private, public = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert public.is_file()
    code, _, err = cli(capsys, "keygen", "--out", str(tmp_path / "key"))
    assert_one_line_error(code, err, "exists; choose another --out (a key is never overwritten)")

    export = tmp_path / "export"
    code, out, err = cli(
        capsys,
        "export",
        "tiny",
        "--run",
        str(tiny_run),
        "--out",
        str(export),
        "--components",
        "decode,step",
        "--sign",
        str(private),
    )
    assert code == 0, err
    assert (export / "manifest.sig").is_file()
    code, out, err = cli(capsys, "run", str(export), "--verify", str(public), "--out", str(tmp_path / "grid.png"))
    assert code == 0, err
    assert (tmp_path / "grid.png").is_file(), err

    manifest = json.loads((export / "manifest.json").read_text())
    manifest["config"]["num_codes"] = 8
    (export / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli(capsys, "run", str(export), "--verify", str(public))
    assert_one_line_error(code, err, "manifest.sig does not match manifest.json")


def test_a_bad_signing_key_is_refused_before_the_export(tiny_cli, tiny_run, tmp_path, capsys):
    (tmp_path / "key.pem").write_text("not a key")
    code, _, err = cli(
        capsys,
        "export",
        "tiny",
        "--run",
        str(tiny_run),
        "--out",
        str(tmp_path / "e"),
        "--sign",
        str(tmp_path / "key.pem"),
    )
    assert_one_line_error(code, err, f"--sign {tmp_path / 'key.pem'}: not a PEM private key")
    assert not (tmp_path / "e").exists()


# arguments that were read wrong or not at all (issue 25, cases 9-11) ------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("plugins: 5\n", "'plugins' must be a list of module names or .py files"),
        ('plugins: "./x.py"\n', "'plugins' must be a list of module names or .py files"),
        ("plugins: [3]\n", "'plugins' must be a list of module names or .py files"),
        ("presets: 5\n", "'presets' must map models to named presets of config fields"),
        ("presets: {var: {small: 3}}\n", "'presets' must map models to named presets of config fields"),
    ],
)
def test_a_registry_file_of_the_wrong_shape_is_one_line(tmp_path, capsys, content, message):
    registry = tmp_path / "registry.yaml"
    registry.write_text(content)
    (tmp_path / "x.py").write_text("raise SystemExit('imported')\n")
    reset_registry()
    try:
        code, _, err = cli(capsys, "--registry", str(registry), "list")
    finally:
        reset_registry()
    assert_one_line_error(code, err, message)


@pytest.mark.parametrize("flag", ["--registry", "--config"])
def test_a_directory_given_for_a_file_is_not_said_not_to_exist(tmp_path, capsys, flag):
    args = (
        ["--registry", str(tmp_path), "list"] if flag == "--registry" else ["train", "var", "--config", str(tmp_path)]
    )
    reset_registry()
    try:
        code, _, err = cli(capsys, *args)
    finally:
        reset_registry()
    assert_one_line_error(code, err, f"{tmp_path} is a directory, not a file")
    assert "does not exist" not in err


def test_a_missing_path_and_a_file_for_an_export_directory_are_told_apart(tmp_path, capsys):
    code, _, err = cli(capsys, "run", str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, "nowhere does not exist")
    (tmp_path / "file").write_text("x")
    code, _, err = cli(capsys, "run", str(tmp_path / "file"))
    assert_one_line_error(code, err, "file is a file, not a directory")


@pytest.mark.parametrize("out", ["", ".pem", "keys/"])
def test_keygen_without_a_key_name_is_one_line(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "keygen", "--out", out)
    assert_one_line_error(code, err, "names no key file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "var", "--nproc-per-node", "0"], "argument --nproc-per-node: must be at least 1, got 0"),
        (["train", "var", "--nproc-per-node", "-1"], "argument --nproc-per-node: must be at least 1, got -1"),
        (["train", "var", "--seed", "99999999999999999999999"], "argument --seed: must be from 0 to 4294967295"),
        (["train", "var", "--checkpoint-every", "0"], "argument --checkpoint-every: must be at least 1"),
        (["train", "var", "--log-every-seconds", "inf"], "must be a finite number above 0"),
        (["run", "nowhere", "--threads", "100000"], "argument --threads: must be from 1 to 1024"),
        (["run", "nowhere", "--threads", "0"], "argument --threads: must be from 1 to 1024"),
    ],
)
def test_out_of_range_flags_are_usage_errors_before_any_work(capsys, args, message):
    code, _, err = cli(capsys, *args)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err


def test_the_seed_of_the_config_is_bounded_too():
    from zoo import api
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="config field 'seed'"):
        api.resolve_config("var", overrides={"seed": 99999999999999999999999})


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("flag", ["--cfg", "--gumbel"])
def test_non_finite_or_absurd_guidance_is_refused_by_the_options(flag, value):
    """--cfg inf made every token the same, --gumbel inf a NaN image, both with exit 0.
    Non-finite values are refused by every option schema (a finite upper bound, for 1e308,
    belongs to each model's SampleOptions)."""
    from zoo.config import validate
    from zoo.errors import ConfigError
    from zoo_var.config import VARSampleOptions

    with pytest.raises(ConfigError, match=f"sample option '{flag[2:]}'"):
        validate(VARSampleOptions, {flag[2:]: value}, what="sample option")


def test_mask_without_edit_is_refused():
    from zoo.config import validate
    from zoo.errors import ConfigError
    from zoo_var.config import VARSampleOptions

    with pytest.raises(ConfigError, match="--mask applies to --edit IMAGE"):
        validate(VARSampleOptions, {"mask": "m.png"}, what="sample option")
    validate(VARSampleOptions, {"mask": "m.png", "edit": "e.png"}, what="sample option")


def test_export_with_empty_components_is_one_line(tiny_cli, tiny_run, tmp_path, capsys):
    code, _, err = cli(
        capsys, "export", "tiny", "--run", str(tiny_run), "--out", str(tmp_path / "e"), "--components", ""
    )
    assert_one_line_error(code, err, "components")
    assert not (tmp_path / "e").exists()


def test_the_resume_command_keeps_the_flags_that_are_not_config(tmp_path, monkeypatch):
    from zoo.cli import build_parser, train as train_cli

    monkeypatch.setattr(
        "zoo.checkpoint.read_trainer_checkpoint", lambda run: (run / "w", {"stage": "tokenizer", "step": 40})
    )
    args = build_parser().parse_args(
        ["train", "var", "--out", "r", "--checkpoint-every", "20", "--device", "cpu", "--stage", "tokenizer", "--quiet"]
    )
    message = train_cli.interrupted_message(args, Path("r"))
    assert "stage tokenizer, step 40" in message
    assert message.splitlines()[-1].strip() == (
        "zoo train var --resume --out r --device cpu --stage tokenizer --checkpoint-every 20 --quiet"
    )


def _edited_export(tiny_export: Path, tmp_path: Path, **config) -> Path:
    """A copy of the export whose manifest config differs (the checksums cover the files it
    lists, and stay valid)."""
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(tiny_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"] = {**manifest["config"], **config} if config else {}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "entry 'config': Dictionary should have at least 1 item"),
        ({"image_size": "abc"}, "the tiny loop cannot use this export (TypeError"),
        ({"embed_dim": 17}, "input 'cache' of component 'step' must have shape"),
    ],
    ids=["empty", "wrong-type", "wrong-shape"],
)
def test_run_on_an_export_whose_config_does_not_fit_is_one_line(tiny_export, tmp_path, capsys, config, message):
    edited = _edited_export(tiny_export, tmp_path, **config)
    code, _, err = cli(capsys, "run", str(edited), "--out", str(tmp_path / "grid.png"))
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "grid.png").exists()


def test_quantart_folder_inputs_are_capped_before_decoding(tmp_path, monkeypatch):
    from PIL import Image

    import zoo_quantart.runtime as quantart
    from zoo.config import MAX_SAMPLES
    from zoo.errors import DataError
    from zoo_quantart.config import QuantArtSampleOptions

    def folder(name: str, count: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        for index in range(count):
            Image.new("RGB", (4, 4), (index, 0, 0)).save(path / f"{index:03d}.png")
        return path

    decoded = []
    read_square = quantart.read_square
    monkeypatch.setattr(quantart, "read_square", lambda *a: decoded.append(a[0]) or read_square(*a))
    loop = quantart.QuantArtRuntime(None, {"vqgan": {"ch_mult": [1, 2]}, "image_size": 8}, {}, {})
    many = folder("many", MAX_SAMPLES + 1)
    with pytest.raises(DataError, match=f"{MAX_SAMPLES + 1} images; a call draws at most {MAX_SAMPLES}"):
        loop.sample(QuantArtSampleOptions(content=str(many), style=str(many)))
    assert decoded == []  # refused from the listing
    pairs = folder("pairs", 21)  # 21 x 21 = 441 stylised images
    with pytest.raises(DataError, match="21 content x 21 style images make 441 images; a call draws at most 256"):
        loop.sample(QuantArtSampleOptions(content=str(pairs), style=str(pairs)))


def test_a_permission_error_is_not_said_to_be_a_missing_file(tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so the denial is the file system's answer, patched."""
    import errno
    import pathlib

    config = tmp_path / "locked" / "config.yaml"
    stat = pathlib.Path.stat

    def denied(self, *args, **kwargs):
        if self == config:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", denied)
    code, _, err = cli(capsys, "train", "var", "--config", str(config))
    assert_one_line_error(code, err, f"cannot access {config}: Permission denied")
    assert "does not exist" not in err and "No such file" not in err
