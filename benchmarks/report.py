"""Markdown reports shared by the benchmark scripts (they run as `python benchmarks/X.py`, so
this folder is on the import path): tables, exporter validation errors, the results file."""

from __future__ import annotations

from pathlib import Path


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def validation_errors(manifest: dict, component: str) -> tuple[float | None, float | None]:
    """The largest validation errors the exporter recorded for a component: (max abs error of
    float outputs, share of differing elements of integer outputs); None where it has none."""
    checks = [
        output for check in manifest["components"][component]["validation"] for output in check["outputs"].values()
    ]
    floats = [output["max_abs_error"] for output in checks if "mismatch_fraction" not in output]
    integers = [output["mismatch_fraction"] for output in checks if "mismatch_fraction" in output]
    return max(floats, default=None), max(integers, default=None)


class Report:
    """Sections printed as soon as they are measured, written to `path` together at the end."""

    def __init__(self, path: Path, *sections: str) -> None:
        self.path, self.sections = path, []
        for section in sections:
            self.add(section)

    def add(self, section: str) -> None:
        self.sections.append(section)
        print(section, flush=True)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n\n".join(self.sections) + "\n")
        print(f"\nwritten to {self.path}")
