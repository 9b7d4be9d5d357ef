"""Registers the ONNX exporter with zoo, like any third party's plugin: an entry point
(`zoo_onnx = "zoo_onnx.plugin"` in the `zoo.plugins` group) and one hook. Wiring only;
torch and onnx are imported when an export runs, not when the plugin loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import zoo
from zoo_onnx.options import PRECISIONS, OnnxOptions

if TYPE_CHECKING:
    from torch import nn


class OnnxExporter(zoo.Exporter[OnnxOptions]):
    name = "onnx"
    description = "one validated .onnx graph per component + manifest.json, run by `zoo run` without torch"
    precisions = PRECISIONS
    Options = OnnxOptions

    def export(
        self,
        plugin: zoo.ModelPlugin[Any, Any, Any],
        model: nn.Module,
        config: zoo.ZooConfig,
        out_dir: Path,
        options: OnnxOptions,
    ) -> dict[str, Any]:
        from zoo_onnx.export import export_model

        return export_model(
            plugin,
            model,
            config,
            out_dir,
            opset=options.opset,
            precision=options.precision,
            components=options.components,
            device=options.device,
            sign_key=options.sign_key,
        )

    def summary(self, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        """Per component: the torch exporter that traced it and the worst validation errors."""
        rows = []
        for name, entry in manifest["components"].items():
            outputs = [errors for run in entry["validation"] for errors in run["outputs"].values()]
            worst_abs = max((e["max_abs_error"] for e in outputs if "max_abs_error" in e), default=0.0)
            mismatch = max((e["mismatch_fraction"] for e in outputs if "mismatch_fraction" in e), default=0.0)
            rows.append(
                {
                    "component": name,
                    "exporter": entry["exporter"],
                    "max abs error": f"{worst_abs:.2e}",
                    "integer mismatch": f"{mismatch:.3g}",
                    "file": entry["file"],
                }
            )
        return rows

    def notes(self, manifest: dict[str, Any], out_dir: Path, options: OnnxOptions) -> list[str]:
        return [f"signed with {options.sign_key}: {out_dir}/manifest.sig"] if options.sign_key else []


@zoo.hookimpl
def zoo_register_exporters() -> list[zoo.Exporter]:
    return [OnnxExporter()]
