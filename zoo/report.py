"""`zoo report RUN [RUN ...]`: one self-contained HTML page of a run, or a comparison.

One run: the resolved config, every stage's curves from metrics.jsonl (loss terms,
learning rate, codebook usage/perplexity, validation loss: whatever the stage logs), every
grid the stage wrote (samples/STAGE.png and the in-training samples/STAGE/step_N.png),
eval.json, an export's validation errors (`--export DIR`) and the environment of every
training session. Several runs: a table of final metrics, the config fields that differ,
and each metric's curves overlaid.

Plots are matplotlib (Agg) SVG inlined in the page, images are base64 PNG: the file needs
nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zoo import checkpoint as records
from zoo.config import config_differences
from zoo.errors import RunError

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; max-height: 30em; }
.plots { display: flex; flex-wrap: wrap; gap: .5em; }
.plots figure, .grids figure { margin: 0; }
.grids { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-end; }
.grids img { image-rendering: pixelated; border: 1px solid #ddd; max-width: 100%; }
figcaption { font-size: .8em; color: #555; }
.bad { color: #b00; font-weight: bold; }
"""

# Panels of a stage's curves: (title, does this metric belong); the rest go to `losses`
PANELS: list[tuple[str, Any]] = [
    ("learning rate", lambda key: key == "lr" or key.endswith("/lr")),
    ("throughput (images/s)", lambda key: key == "images_per_s"),
    ("codebook", lambda key: any(word in key for word in ("usage", "perplexity", "codebook", "dead"))),
    ("validation", lambda key: key.startswith("val_")),
    ("quality", lambda key: any(word in key for word in ("psnr", "accuracy", "ssim", "bleu"))),
    ("gradient norm", lambda key: "grad_norm" in key),
]


# Distribution metrics logged at validations (val_fid, val_rfid/tokenizer, ...): each in a
# panel of its own, their scales having nothing in common with a loss or with each other.
DISTRIBUTION = ("fid", "isc", "kid", "precision", "recall", "f_score", "ssim/")


def is_distribution_metric(key: str) -> bool:
    return key.startswith("val_") and any(key[4:].startswith(word) for word in DISTRIBUTION)


def write_report(runs: list[Path], out: Path, export_dir: Path | None = None) -> None:
    """Write the page for one run, or the comparison of several, to `out`."""
    runs = [Path(run) for run in runs]
    for run in runs:
        records.read_run_record(run)  # a clear error for a folder that holds no run
    page = run_page(runs[0], export_dir) if len(runs) == 1 else comparison_page(runs)
    out = Path(out)
    records.atomic_write_bytes(out, page.encode())


# one run ---------------------------------------------------------------------------------


def run_page(run: Path, export_dir: Path | None = None) -> str:
    record = records.read_run_record(run)
    metrics = records.read_metrics(run)
    summaries = records.stage_summaries(run)
    stages = _stage_order(record, metrics, run)
    title = f"{record['model']} run {run}"
    body = [f"<h1>{_e(title)}</h1>", _overview(record, summaries, run)]
    for stage in stages:
        body.append(f"<h2>stage {_e(stage)}</h2>")
        body.append(_stage_summary_line(summaries.get(stage)))
        plots = stage_plots([m for m in metrics if m.get("stage") == stage and "event" not in m])
        body.append(_plots_html(plots) if plots else "<p>no metrics logged for this stage</p>")
        body.append(_measured_on_html(run, stage_metrics(metrics, stage)))
        body.append(_grids_html(run, stage))
    evaluation = run / "eval.json"
    if evaluation.is_file():
        body.append("<h2>evaluation (eval.json)</h2>")
        body.append(_table(["metric", "value"], [[k, _fmt(v)] for k, v in _read_json(evaluation).items()]))
    if export_dir is not None:
        body.append(_export_html(Path(export_dir)))
    body.append("<h2>environment</h2>")
    body.append(_environment_html(record))
    body.append("<h2>resolved config</h2>")
    body.append(f"<pre>{_e(json.dumps(record['config'], indent=2))}</pre>")
    return _page(title, body)


def stage_metrics(metrics: list[dict[str, Any]], stage: str) -> set[str]:
    """The names a stage logged."""
    return {key for row in metrics if row.get("stage") == stage for key in row}


def _measured_on_html(run: Path, logged: set[str]) -> str:
    """What each of the stage's validation metrics was measured on: N, the reference, the
    Inception weights' sha256 (a number never stands without them)."""
    from zoo.metrics import MEASURED_ON_FILE

    path = run / MEASURED_ON_FILE
    if not path.is_file():
        return ""
    measured = _read_json(path)
    rows = [
        [key, str(about.get("samples")), str(about.get("reference") or "none (IS)"), str(about.get("inception_sha256"))]
        for key, about in measured.items()
        if key in logged and isinstance(about, dict)
    ]
    if not rows:
        return ""
    return "<h3>validation metrics measured on</h3>" + _table(["metric", "N", "reference", "Inception sha256"], rows)


def _stage_order(record: dict[str, Any], metrics: list[dict[str, Any]], run: Path) -> list[str]:
    order: list[str] = []
    for name in [*record.get("completed", []), *(m.get("stage") for m in metrics)]:
        if isinstance(name, str) and name not in order:
            order.append(name)
    for grid in sorted((run / "samples").glob("*.png")):
        if grid.stem not in order:
            order.append(grid.stem)
    return order


def _overview(record: dict[str, Any], summaries: dict[str, Any], run: Path) -> str:
    rows = [
        ["model", f"{record['model']} {record.get('plugin_version', '')}"],
        ["preset", str(record.get("preset"))],
        ["run directory", str(run)],
        ["finished stages", ", ".join(record.get("completed", [])) or "none"],
    ]
    sessions = record.get("sessions", [])
    if sessions:
        rows.append(["trained", f"{sessions[0].get('started')} to {sessions[-1].get('ended') or '(running)'}"])
    table = _table(["", ""], rows, show_header=False)
    final = [
        [name, _fmt(summary.get("seconds")), str(summary["steps"]), _metrics_text(summary["metrics"])]
        for name, summary in summaries.items()
    ]
    return table + _table(["stage", "seconds", "steps", "final metrics"], final)


def _stage_summary_line(summary: dict[str, Any] | None) -> str:
    if not summary:
        return ""
    seconds = summary.get("seconds")
    took = f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else "not finished"
    return f"<p>{summary['steps']} steps, {took}; final: {_e(_metrics_text(summary['metrics']))}</p>"


def group_metrics(keys: Iterable[str]) -> dict[str, list[str]]:
    """Panel title -> the metric names plotted in it; the rest go to `losses`."""
    panels: dict[str, list[str]] = {"losses": []}
    for key in keys:
        if is_distribution_metric(key):
            panels[key] = [key]
            continue
        for title, belongs in PANELS:
            if belongs(key):
                panels.setdefault(title, []).append(key)
                break
        else:
            panels["losses"].append(key)
    return {title: keys for title, keys in panels.items() if keys}


def stage_plots(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """[(title, svg)] for one stage's step records."""
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in ("stage", "step") and isinstance(value, (int, float)) and key not in keys:
                keys.append(key)
    plots = []
    for title, names in group_metrics(keys).items():
        series = {
            name: [(row["step"], row[name]) for row in rows if isinstance(row.get(name), (int, float))]
            for name in names
        }
        plots.append((title, line_plot(title, series)))
    return plots


def line_plot(title: str, series: dict[str, list[tuple[float, float]]]) -> str:
    """An SVG line plot, one line per series; log y when every value is positive and they span 100x."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    # Text as SVG text, not glyph paths: smaller, searchable, and selectable in the page.
    matplotlib.rcParams["svg.fonttype"] = "none"
    figure, axes = plt.subplots(figsize=(4.6, 3.0), dpi=100)
    values = [v for points in series.values() for _, v in points]
    for name, points in series.items():
        if not points:
            continue
        steps, ys = zip(*points, strict=True)
        axes.plot(steps, ys, label=name, linewidth=1.4, marker="." if len(points) < 12 else None)
    if values and min(values) > 0 and max(values) / min(values) > 100:
        axes.set_yscale("log")
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("step", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    if len(series) > 1 or title not in series:
        axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prologue: the SVG sits inside HTML


def _plots_html(plots: list[tuple[str, str]]) -> str:
    figures = "".join(f'<figure class="plot" data-title="{_e(title)}">{svg}</figure>' for title, svg in plots)
    return f'<div class="plots">{figures}</div>'


def _step_number(path: Path) -> int:
    found = re.search(r"(\d+)", path.stem)
    return int(found.group(1)) if found else 0


def _grids_html(run: Path, stage: str) -> str:
    samples = run / "samples"
    during = sorted((samples / stage).glob("step_*.png"), key=_step_number)
    final = samples / f"{stage}.png"
    parts = []
    for path in during:
        parts.append(_image_figure(path, f"step {_step_number(path)}"))
    if final.is_file():
        parts.append(_image_figure(final, "end of stage"))
        texts = final.with_suffix(".txt")
        if texts.is_file():
            parts.append(f"<figure><pre>{_e(texts.read_text()[:4000])}</pre><figcaption>texts</figcaption></figure>")
    if not parts:
        return "<p>no grid written for this stage</p>"
    return f'<h3>grids</h3><div class="grids">{"".join(parts)}</div>'


def _image_figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}: {_e(path.name)}</figcaption></figure>"
    )


def _export_html(export_dir: Path) -> str:
    path = export_dir / "manifest.json"
    if not path.is_file():
        raise RunError(f"--export {export_dir} holds no manifest.json; make one with `zoo export MODEL --out DIR`")
    manifest = _read_json(path)
    rows = []
    for name, component in manifest.get("components", {}).items():
        checks = component.get("validation") or []
        worst = _worst_errors(checks)
        rows.append([name, str(component.get("precision")), _fmt(component.get("tolerance")), worst])
    header = f"<h2>export {_e(str(export_dir))}</h2><p>opset {_e(str(manifest.get('opset')))}, precision "
    header += f"{_e(str(manifest.get('precision')))}; errors against torch at the validation sizes:</p>"
    return header + _table(["component", "precision", "tolerance", "validation (worst over sizes)"], rows)


def _worst_errors(checks: list[Any]) -> str:
    """The largest of every numeric error field over a component's validation sizes."""
    worst: dict[str, float] = {}

    def visit(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(v, k)
        elif isinstance(value, list):
            for v in value:
                visit(v, key)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and ("error" in key or "mismatch" in key):
            worst[key] = max(worst.get(key, float("-inf")), float(value))

    visit(checks)
    return ", ".join(f"{k} {v:.3g}" for k, v in worst.items()) or "not validated"


def _environment_html(record: dict[str, Any]) -> str:
    sessions = record.get("sessions", [])
    if not sessions:
        return "<p>not recorded (this run was written before zoo recorded its sessions)</p>"
    rows = []
    for session in sessions:
        versions = session.get("versions", {})
        rows.append(
            [
                str(session.get("started")),
                str(session.get("ended") or ""),
                str(session.get("status")),
                " ".join(str(part) for part in session.get("command", [])),
                f"{session.get('device')} x{session.get('world_size', 1)}, {session.get('threads')} threads",
                str(session.get("precision")),
                ", ".join(f"{k} {v}" for k, v in versions.items()),
                f"{session.get('platform')} ({session.get('processor')})",
            ]
        )
    header = ["started", "ended", "status", "command", "device", "precision", "versions", "platform"]
    return _table(header, rows)


# several runs ----------------------------------------------------------------------------


def comparison_page(runs: list[Path]) -> str:
    loaded = [(run, records.read_run_record(run), records.read_metrics(run)) for run in runs]
    title = "comparison of " + ", ".join(str(run) for run in runs)
    body = [f"<h1>{_e(title)}</h1>", "<h2>final metrics</h2>", _comparison_table(runs)]
    body.append("<h2>config differences</h2>")
    body.append(_config_differences_html(loaded))
    stage_keys: dict[str, list[str]] = {}
    for _, _, metrics in loaded:
        for row in metrics:
            stage = row.get("stage")
            if not isinstance(stage, str) or "event" in row:
                continue
            keys = stage_keys.setdefault(stage, [])
            for key, value in row.items():
                if key not in ("stage", "step") and isinstance(value, (int, float)) and key not in keys:
                    keys.append(key)
    for stage, keys in stage_keys.items():
        body.append(f"<h2>stage {_e(stage)}: curves overlaid</h2>")
        plots = []
        for key in keys:
            series = {
                str(run): [
                    (row["step"], row[key])
                    for row in metrics
                    if row.get("stage") == stage and "event" not in row and isinstance(row.get(key), (int, float))
                ]
                for run, _, metrics in loaded
            }
            plots.append((key, line_plot(key, series)))
        body.append(_plots_html(plots))
        body.append('<div class="grids">')
        for run, _, _ in loaded:
            final = run / "samples" / f"{stage}.png"
            if final.is_file():
                body.append(_image_figure(final, str(run)))
        body.append("</div>")
    return _page(title, body)


def _comparison_table(runs: list[Path]) -> str:
    columns: list[str] = []
    values: list[dict[str, Any]] = []
    for run in runs:
        row: dict[str, Any] = {}
        for stage, summary in records.stage_summaries(run).items():
            row[f"{stage} seconds"] = summary.get("seconds")
            for key, value in summary["metrics"].items():
                row[f"{stage} {key}"] = value
        evaluation = run / "eval.json"
        if evaluation.is_file():
            for key, value in _read_json(evaluation).items():
                row[f"eval {key}"] = value
        values.append(row)
        columns.extend(key for key in row if key not in columns)
    rows = [[column, *[_fmt(row.get(column)) for row in values]] for column in columns]
    return _table(["metric", *[str(run) for run in runs]], rows)


def _config_differences_html(loaded: list[tuple[Path, dict[str, Any], Any]]) -> str:
    first_run, first, _ = loaded[0]
    fields: dict[str, dict[str, str]] = {}
    for run, record, _ in loaded[1:]:
        for key, old, new in config_differences(
            {"model": first["model"], **first["config"]}, {"model": record["model"], **record["config"]}
        ):
            fields.setdefault(key, {str(first_run): old})[str(run)] = new
    if not fields:
        return "<p>the runs have the same config</p>"
    rows = []
    for key, by_run in fields.items():
        reference = by_run[str(first_run)]
        rows.append([key, *[by_run.get(str(run), reference) for run, _, _ in loaded]])
    return _table(["field", *[str(run) for run, _, _ in loaded]], rows)


# html ------------------------------------------------------------------------------------


def _page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _table(header: list[str], rows: list[list[str]], show_header: bool = True) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if show_header else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _metrics_text(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} does not hold a JSON object")
    return data
