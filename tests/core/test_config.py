"""Config resolution order, typed --set, one-line validation errors."""

from __future__ import annotations

import pydantic
import pytest

from zoo.config import ZooConfig, parse_overrides, resolve
from zoo.errors import ConfigError


class Inner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    depth: int = 2
    name: str = "a"
    sizes: list[int] = [1, 2]


class Schema(ZooConfig):
    lr: float = 1e-3
    inner: Inner = Inner()
    label: str | None = None


def test_layers_apply_in_order(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("lr: 0.3\ninner: {depth: 7}\n")
    config = resolve(
        Schema,
        preset={"lr": 0.1, "inner": {"name": "p"}},
        registry_overrides={"lr": 0.2},
        config_file=config_file,
        assignments=["inner.depth=9"],
    )
    assert (config.lr, config.inner.depth, config.inner.name) == (0.3, 9, "p")
    assert resolve(Schema, preset={"lr": 0.1}, registry_overrides={"lr": 0.2}).lr == 0.2


def test_set_values_are_typed_by_the_schema():
    values = parse_overrides(Schema, ["inner.name=007", "inner.depth=3", "inner.sizes=[4, 5]", "label=1e-3"])
    assert values == {"inner": {"name": "007", "depth": 3, "sizes": [4, 5]}, "label": "1e-3"}
    assert resolve(Schema, assignments=["lr=1e-4"]).lr == 1e-4
    with pytest.raises(ConfigError, match="no such config field"):
        parse_overrides(Schema, ["inner.width=3"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(Schema, ["depth"])


def test_invalid_fields_give_one_line_each():
    with pytest.raises(ConfigError) as error:
        resolve(Schema, assignments=["lr=fast", "inner.depth=[1]"])
    lines = str(error.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("config field 'lr': Input should be a valid number")
    assert lines[1].startswith("config field 'inner.depth'")


def test_unknown_fields_are_rejected(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("inner: {widht: 3}\n")
    with pytest.raises(ConfigError, match="inner.widht': Extra inputs are not permitted"):
        resolve(Schema, config_file=config_file)
