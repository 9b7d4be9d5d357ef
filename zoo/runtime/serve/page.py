"""The web page at `/`: one static HTML file with its script (no build step). It builds its
form from each model's option schema (GET /v1/models) and posts to the sample endpoint."""

from __future__ import annotations

from importlib.resources import files


def page_html() -> str:
    return files("zoo.runtime.serve").joinpath("page.html").read_text(encoding="utf-8")
