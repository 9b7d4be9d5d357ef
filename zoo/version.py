"""zoo's version, in this one place: pyproject.toml reads it, the package re-exports it,
run records and export manifests write it, and built-in plugins and exporters carry it."""

__version__ = "0.2.0"
