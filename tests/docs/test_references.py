"""The reference pages the site generates from the code (docs/hooks/references.py) cover
every command, flag, config field and route, so that a new one cannot go undocumented."""

from __future__ import annotations

import argparse
import importlib.util
from types import ModuleType

import pydantic
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def references() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_references", ROOT / "docs" / "hooks" / "references.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.on_config(None)
    return module


def leaf_fields(schema: type[pydantic.BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            names += leaf_fields(annotation, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def test_every_config_field_and_sample_option_is_listed(references: ModuleType) -> None:
    from zoo.registry import get_registry

    page = references.config_reference()
    registry = get_registry()
    assert "## `tiny_autoencoder`" in page, "the example plugin is documented beside the built-in ones"
    for name in registry.models:
        plugin = registry.get(name)
        assert f"## `{name}`" in page
        for field in leaf_fields(plugin.Config):
            assert f"| `{field}` |" in page, f"{name}: config field {field} is missing"
        for option in plugin.SampleOptions.model_fields:
            assert f"| `{option}` |" in page, f"{name}: sample option {option} is missing"
        for preset in registry.presets(name):
            assert f"| `{preset}`" in page, f"{name}: preset {preset} is missing"


def test_every_command_and_flag_is_listed(references: ModuleType) -> None:
    from zoo.cli import PASS_THROUGH, build_parser

    page = references.cli_reference()
    parsers = [("zoo", build_parser())]
    while parsers:
        title, parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    assert f"## `{title} {name}`" in page, f"{title} {name} is missing"
                    parsers.append((f"{title} {name}", sub))
            elif not isinstance(action, argparse._HelpAction):
                for flag in action.option_strings:
                    assert f"`{flag}`" in page, f"{title}: {flag} is missing"
    for command in PASS_THROUGH:  # their flags are built when they run: the page shows their --help
        assert f"usage: zoo {command}" in page, f"zoo {command}'s help is missing"


def test_every_route_is_listed_with_its_errors(references: ModuleType) -> None:
    page = references.http_reference()
    for route in ("`GET /`", "`GET /v1/models`", "`POST /v1/models/{name}/sample`", "`GET /healthz`", "`GET /metrics`"):
        assert f"## {route}" in page, f"{route} is missing"
    for status in ("404", "413", "415", "422", "503", "504"):
        assert status in page, f"status {status} is not documented"


def test_every_published_checkpoint_is_listed(references: ModuleType) -> None:
    from zoo.registry import get_registry

    page = references.importers_reference()
    for entry in get_registry().importers.values():
        assert f"| `{entry.importer.format}` |" in page
        for checkpoint in entry.importer.checkpoints:
            assert f"| `{checkpoint.name}` |" in page, f"{checkpoint.name} is missing"
