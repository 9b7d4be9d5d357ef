"""`zoo serve`: load the exports, then run the app on uvicorn."""

from __future__ import annotations

import uvicorn

from zoo.runtime.serve.app import create_app
from zoo.runtime.serve.models import load_models
from zoo.runtime.serve.settings import ServeSettings


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Blocks until interrupted. Exports are loaded (and verified) before the port opens, so a
    broken export is one error line and no server."""
    models = load_models(settings)
    app = create_app(models, settings)
    for name, model in models.items():
        print(f"serving {name} ({model.loaded.model}, {model.loaded.providers['used']}) from {model.loaded.export_dir}")
    print(f"web page and API on http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
