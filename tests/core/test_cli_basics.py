"""The CLI's manners, without training: version, help, listing filters, JSON, pipes, completion."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

import zoo
from tests.conftest import zoo_command
from tests.core.test_cli import cli

COMMANDS = ["list", "plugins", "info", "data", "train", "sample", "eval", "export", "run", "report", "import", "keygen"]


def test_version_and_bare_zoo(capsys):
    code, stdout, stderr = cli(capsys, "--version")
    assert code == 0, stderr
    assert stdout.strip() == f"zoo {zoo.__version__}"
    code, stdout, stderr = cli(capsys)
    assert code == 0, stderr
    assert stderr == ""
    assert stdout.startswith("usage: zoo")
    assert all(command in stdout for command in COMMANDS)
    assert "examples:" in stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_defaults_and_an_example(capsys, command):
    code, stdout, _ = cli(capsys, command, "--help")
    assert code == 0
    assert stdout.startswith(f"usage: zoo {command}")
    assert "example" in stdout.split("options:")[-1]  # the epilog, after the flags
    assert "--" in stdout.split("options:")[-1], "the command's flags are listed"


def test_every_flag_has_a_help_line():
    import argparse

    from zoo.cli import build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in [("zoo", parser), *commands.choices.items()]:
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        assert sub.epilog, name
        assert "example" in sub.epilog, name


def test_help_shows_defaults(capsys, example_plugin_env):
    _, stdout, _ = cli(capsys, "train", "--help")
    flat = " ".join(stdout.split())
    assert "--checkpoint-every CHECKPOINT_EVERY steps between trainer checkpoints (default: 200)" in flat
    assert "(default: 30.0)" in flat
    assert "--tensorboard [DIR]" in flat
    _, stdout, _ = cli(capsys, "sample", "tiny_autoencoder", "--help")
    flat = " ".join(stdout.split())
    assert "--device {auto,cpu,cuda} where torch samples (default: auto)" in flat
    assert "--seed SEED random seed of the sampling loop (default: 0)" in flat
    assert "examples:" in flat


def test_list_filters_by_glob(capsys, example_plugin_env, monkeypatch):
    from zoo.registry import reset_registry

    monkeypatch.setenv("ZOO_LOAD_PLUGINS", "tiny_autoencoder,zoo_var,zoo_vqvae2_pixelcnn")
    reset_registry()
    assert zoo.list_models("v*") == ["var", "vqvae2_pixelcnn"]
    assert zoo.list_models("*auto*") == ["tiny_autoencoder"]
    assert zoo.list_models("x*") == []
    code, stdout, stderr = cli(capsys, "list", "v*", "--json")
    assert code == 0, stderr
    assert [row["name"] for row in json.loads(stdout)] == ["var", "vqvae2_pixelcnn"]
    code, stdout, stderr = cli(capsys, "list", "nothing*")
    assert code == 0, stderr
    assert "no model matches 'nothing*'" in stderr


def test_info_json(capsys, example_plugin_env):
    code, stdout, _ = cli(capsys, "info", "--json", "tiny_autoencoder", "--preset", "fast")
    info = json.loads(stdout)
    assert code == 0
    assert info["name"] == "tiny_autoencoder"
    assert info["preset"] == "fast"
    assert info["config"]["steps"] == 50
    assert info["stages"][0]["name"] == "autoencoder"
    assert info["fields"]["sample_every"].startswith("write the stage's grid")
    assert info["components"] == ["encoder", "decoder"]


def test_commands_with_model_options_print_their_help_without_a_model(capsys):
    for command, positional in (("sample", "MODEL"), ("export", "MODEL"), ("run", "EXPORT_DIR")):
        code, stdout, stderr = cli(capsys, command, "--help")
        assert code == 0, stderr
        assert positional in stdout
        assert "examples:" in stdout
        code, _, stderr = cli(capsys, command)
        assert code == 2, stderr
        assert f"required: {positional}" in stderr


def test_a_closed_pipe_is_quiet(example_site):
    """`zoo info MODEL | head -1`: the reader is gone before zoo writes; no traceback."""
    from tests.core.test_cli import _example_env

    process = subprocess.Popen(
        zoo_command("info", "tiny_autoencoder"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_example_env(example_site),
    )
    assert process.stdout is not None
    process.stdout.close()  # no reader: the first write fails with EPIPE
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 141, stderr.decode()
    assert stderr == b"", stderr.decode()


def test_shell_completion(tmp_path, example_site):
    from tests.core.test_cli import _example_env

    out = tmp_path / "completions"
    env = {
        **_example_env(example_site),
        "_ARGCOMPLETE": "1",
        "COMP_LINE": "zoo tr",
        "COMP_POINT": "6",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    result = subprocess.run(zoo_command(), env=env, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_text().split() == ["train"]
    env["COMP_LINE"] = env["COMP_POINT"] = ""
    env.update(COMP_LINE="zoo train --log", COMP_POINT=str(len("zoo train --log")))
    subprocess.run(zoo_command(), env=env, capture_output=True, timeout=120)
    assert out.read_text().split() == ["--log-every-seconds"]
    assert os.environ.get("_ARGCOMPLETE") is None
