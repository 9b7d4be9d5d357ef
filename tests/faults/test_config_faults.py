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


# List fields whose items are bounded otherwise than by their own annotation, with why.
BOUNDED_ELSEWHERE = {
    "tokenizer.patch_nums": "the Config's validator: increasing sides ending at the latent side",
    "transformer_training.betas": "its field validator: each in [0, 1)",
}


def _bounded_above(metadata: typing.Iterable[object]) -> bool:
    return any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in metadata)


def _number_items(annotation: object) -> list[object]:
    """The item annotations of a list/tuple of numbers (`list[int]`, `list[Annotated[int, ...]]`)."""
    if typing.get_origin(annotation) not in (list, tuple):
        return [item for arg in typing.get_args(annotation) for item in _number_items(arg)]  # Optional[list[...]]
    items = []
    for arg in typing.get_args(annotation):
        base = typing.get_args(arg)[0] if typing.get_origin(arg) is typing.Annotated else arg
        if base in (int, float):
            items.append(arg)
    return items


@pytest.mark.parametrize("model", EVERY_MODEL)
def test_every_numeric_config_field_has_an_upper_bound(model, registry_with):
    """`--set tokenizer.channels=200000` or `batch_size=1e9` must be refused, not allocated:
    every int and float (and every number in a list) has a finite le/lt bound."""
    plugin = registry_with(model).get(model)
    unbounded = []
    for path, field in fields(plugin.Config):
        kinds = {arg for arg in (field.annotation, *typing.get_args(field.annotation)) if arg is not type(None)}
        if kinds & {int, float} and not kinds - {int, float}:
            if not _bounded_above(field.metadata) and not _has_validator(plugin.Config, path):
                unbounded.append(path)
            continue
        items = _number_items(field.annotation)
        if items and path not in BOUNDED_ELSEWHERE:
            if not all(typing.get_origin(i) is typing.Annotated and _bounded_above(_metadata(i)) for i in items):
                unbounded.append(path)
    assert unbounded == []


def _metadata(annotated: object) -> list[object]:
    """The constraints of `Annotated[int, Field(le=...)]` (a FieldInfo holds them in .metadata)."""
    found: list[object] = []
    for extra in typing.get_args(annotated)[1:]:
        found.extend(getattr(extra, "metadata", [extra]))
    return found


@pytest.mark.parametrize(
    "assignment",
    [
        "tokenizer.channels=200000",
        "tokenizer_training.batch_size=1e9",
        "seed=99999999999999999999999",
        "transformer.depth=100000",
        "augment.resize_ratio=1000",
        "loader.workers=100000",
    ],
)
def test_values_that_would_exhaust_the_machine_are_one_line_config_errors(assignment):
    with pytest.raises(ConfigError, match=f"config field '{assignment.split('=')[0]}'") as error:
        api.resolve_config("var", assignments=[assignment])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", ".nan", "1e999"])
@pytest.mark.parametrize("field", ["tokenizer_training.lr", "tokenizer.beta", "transformer_training.clip_grad_norm"])
def test_non_finite_floats_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"config field '{field}'"):
        api.resolve_config("var", assignments=[f"{field}={value}"])


@pytest.mark.parametrize("model", EVERY_MODEL)
def test_sample_options_refuse_non_finite_numbers(model, registry_with):
    schema = registry_with(model).get(model).SampleOptions
    floats = [
        name
        for name, field in schema.model_fields.items()
        if float in (field.annotation, *typing.get_args(field.annotation))
    ]
    for name in floats:
        for value in (float("inf"), float("nan"), "inf"):
            with pytest.raises(ConfigError, match="sample option"):
                validate(schema, {name: value}, what="sample option")


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
        {"cfg": 1e308},  # every token the same
        {"seed": -1},
    ],
    "vqvae2_pixelcnn": [
        {"n": 100000},
        {"temperature": 0},
        {"temperature": 1e-300},  # the logits would overflow
        {"temperature": 1e6},
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
