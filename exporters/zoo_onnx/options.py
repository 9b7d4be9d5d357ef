"""The ONNX exporter's options (`zoo export MODEL --opset 20 --precision int8 ...`) and the
constants they are checked against. Imports no torch and no onnx: the plugin module that
registers the exporter imports this, and listing plugins must stay cheap."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator

from zoo.exporter import ExportOptions

# The newest opset both torch exporters support (torch 2.13: dynamo's default, the
# TorchScript exporter's maximum), so every component of an export has the same opset.
DEFAULT_OPSET = 20
# Dynamo implements opsets from 18 on; asked for less, it exports 18 and converts the
# graph afterwards, which can fail with a printed traceback and leave it at 18.
SUPPORTED_OPSETS = range(18, DEFAULT_OPSET + 1)

ExportPrecision = Literal["fp32", "fp16", "int8"]  # error bounds and conversions: precision.py
PRECISIONS: tuple[str, ...] = get_args(ExportPrecision)


class OnnxOptions(ExportOptions):
    opset: int = Field(
        DEFAULT_OPSET, description=f"ONNX opset, {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}"
    )
    precision: ExportPrecision = Field(
        "fp32", description="fp32; fp16 weights and arithmetic (GPUs); int8 MatMul/Gemm weights (CPUs)"
    )
    components: list[str] | None = Field(
        None,
        min_length=1,  # `--components ''` names none: an export without a graph is refused, not written
        description="the components to export, comma- or space-separated; none named: all",
    )
    sign_key: Path | None = Field(
        None,
        description="sign manifest.json with this Ed25519 private key (KEY.pem)",
        json_schema_extra={"flags": ["--sign"]},
    )
    device: str = Field("cpu", description="torch device that traces and validates against torch")

    @field_validator("components", mode="before")
    @classmethod
    def split_commas(cls, value):
        """`--components a,b` and `--components a b` both name two components."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [name.strip() for item in value for name in str(item).split(",") if name.strip()]
        return value
