"""Out-of-range config values and sample options: one-line ConfigErrors, never a traceback
from deep inside training or an unbounded allocation."""

from __future__ import annotations

import os
import subprocess
import typing

import annotated_types
import pydantic
import pytest

from tests.conftest import zoo_command
from zoo import api
from zoo.config import MAX_SAMPLES, ZooConfig, validate
from zoo.errors import ConfigError
from zoo.registry import get_registry

BUILT_IN = ("var", "vqvae2_pixelcnn", "quantart", "multimodal_caption")
EVERY_MODEL = (*BUILT_IN, "tiny_autoencoder")
TRAINING_FIELDS = {"steps": ["0", "-5"], "batch_size": ["0"], "lr": ["-1"], "lr_per_256": ["-1"], "gan_lr": ["-1"]}


@pytest.fixture
def registry_with(request):
    """The registry holding `model`: the example plugin is loaded through its entry point."""

    def load(model: str):
        if model == "tiny_autoencoder":
            request.getfixturevalue("example_plugin_env")
        return get_registry()

    return load


def fields(
    schema: type[pydantic.BaseModel], prefix: str = ""
) -> typing.Iterator[tuple[str, pydantic.fields.FieldInfo]]:
    """(dotted path, field) of every leaf field of a nested config schema."""
    for name, field in schema.model_fields.items():
        path = f"{prefix}{name}"
        nested = [
            arg
            for arg in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel)
        ]
        if nested:
            yield from fields(nested[0], f"{path}.")
        else:
            yield path, field


def training_assignments(schema: type[ZooConfig]) -> list[str]:
    return [
        f"{path}={value}" for path, _ in fields(schema) for value in TRAINING_FIELDS.get(path.rsplit(".", 1)[-1], [])
    ]


@pytest.mark.parametrize("model", EVERY_MODEL)
def test_zero_or_negative_steps_batch_size_and_lr_are_one_line_config_errors(model, registry_with):
    plugin = registry_with(model).get(model)
    assignments = training_assignments(plugin.Config)
    assert {a.split("=")[0].rsplit(".", 1)[-1] for a in assignments} >= {"steps", "batch_size", "lr"}
    for assignment in assignments:
        with pytest.raises(ConfigError) as error:
            api.resolve_config(model, assignments=[assignment])
        message, field = str(error.value), assignment.split("=")[0]
        assert "\n" not in message, assignment
        assert f"'{field}'" in message, assignment
        assert "greater than" in message, assignment


@pytest.mark.parametrize("model", EVERY_MODEL)
def test_every_numeric_config_field_has_a_lower_bound(model, registry_with):
    """A new int or float field without bounds would let `--set x=-1` reach the model code."""
    plugin = registry_with(model).get(model)
    unbounded = []
    for path, field in fields(plugin.Config):
        kinds = {arg for arg in (field.annotation, *typing.get_args(field.annotation)) if arg is not type(None)}
        if kinds & {int, float} and not kinds - {int, float} and not _has_validator(plugin.Config, path):
            if not any(isinstance(m, (annotated_types.Ge, annotated_types.Gt)) for m in field.metadata):
                unbounded.append(path)
    assert unbounded == []


def _has_validator(schema: type[pydantic.BaseModel], path: str) -> bool:
    """Fields checked by a field_validator of their own section (e.g. a power of two)."""
    *parents, name = path.split(".")
    section = schema
    for parent in parents:
        section = next(
            arg
            for arg in (
                section.model_fields[parent].annotation,
                *typing.get_args(section.model_fields[parent].annotation),
            )
            if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel)
        )
    validators = section.__pydantic_decorators__.field_validators.values()
    return any(name in validator.info.fields for validator in validators)


@pytest.mark.parametrize("model", EVERY_MODEL)
def test_every_preset_validates(model, registry_with):
    registry = registry_with(model)
    presets = registry.presets(model)
    assert presets or model == "tiny_autoencoder"
    for preset in presets:
        api.resolve_config(model, preset)


@pytest.mark.parametrize("assignment", ["seed=-1", "seed=x"])
def test_seed_must_be_a_non_negative_whole_number(assignment):
    with pytest.raises(ConfigError, match="config field 'seed'"):
        api.resolve_config("var", assignments=[assignment])


# --- sample options ---------------------------------------------------------------------------

BAD_OPTIONS = {
    "var": [
        {"n": MAX_SAMPLES + 1, "classes": [0]},
        {"n": 26},
        {"n": 0},
        {"classes": [-2]},
        {"top_k": -1},
        {"top_p": 1.5},
        {"cfg": -1},
        {"seed": -1},
    ],
    "vqvae2_pixelcnn": [
        {"n": 100000},
        {"temperature": 0},
        {"top_k": -1},
        {"classes": [-1]},
        {"n": 200, "classes": [0, 1]},  # n is per class: 400 images
    ],
    "quantart": [{"size": 100000}, {"size": 4}, {"content_style_balance": 1.5}],
    "multimodal_caption": [
        {"n": 100000},
        {"beam_width": 100000},
        {"temperature": 0},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"caption": ["a"] * (MAX_SAMPLES + 1)},
    ],
    "tiny_autoencoder": [{"n": 100000}, {"n": 65}],  # at most the 64 held-out digits an export ships
}
GOOD_OPTIONS = {
    "var": [{"n": MAX_SAMPLES, "classes": [3]}, {"n": 25}, {"classes": [-1, 9]}],
    "vqvae2_pixelcnn": [{"n": MAX_SAMPLES}],
    "quantart": [{"size": 512}],
    "multimodal_caption": [{"n": MAX_SAMPLES, "top_p": 1.0}],
    "tiny_autoencoder": [{"n": 64}],
}


@pytest.mark.parametrize("model", EVERY_MODEL)
def test_sample_options_are_bounded(model, registry_with):
    schema = registry_with(model).get(model).SampleOptions
    for options in BAD_OPTIONS[model]:
        with pytest.raises(ConfigError, match="sample option") as error:
            validate(schema, options, what="sample option")
        assert "\n" not in str(error.value), options
    for options in GOOD_OPTIONS[model]:
        validate(schema, options, what="sample option")


def test_cli_reports_a_bad_config_value_in_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        zoo_command("train", "var", "--set", "tokenizer_training.batch_size=0", "--out", str(tmp_path / "run")),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: config field 'tokenizer_training.batch_size'"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before any file was written
