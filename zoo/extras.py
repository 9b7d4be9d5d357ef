"""Which of zoo's installs is present (no imports of the packages themselves).

`pip install zoo` is the torch-free runtime (`zoo run`, `zoo serve`, `zoo.runtime`);
`pip install 'zoo[train]'` adds what training, sampling from run directories, evaluation,
export and checkpoint import need. The commands of the second kind check first, so that a
runtime-only install answers them with one line naming the install instead of a traceback.
"""

from __future__ import annotations

import importlib.util

from zoo.errors import ZooError

# The import names of the `train` extra in pyproject.toml (timm is imported lazily by the
# few paths that use it, and fails with its own one-line error).
TRAIN_MODULES = (
    "torch",
    "onnx",
    "onnxscript",
    "yaml",
    "rich",
    "sklearn",
    "skimage",
    "sacrebleu",
    "huggingface_hub",
    "httpx",
)
TRAIN_INSTALL = "pip install 'zoo[train]'"


class MissingExtraError(ZooError):
    """A command that needs the `train` extra, run where it is not installed."""


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # an import hook refusing the name counts as absent
        return False


def missing_train_modules() -> list[str]:
    return [module for module in TRAIN_MODULES if not installed(module)]


def require_train(what: str) -> None:
    """Raise one line naming the install when the `train` extra is not (fully) installed."""
    missing = missing_train_modules()
    if missing:
        raise MissingExtraError(
            f"{what} needs the training install ({', '.join(missing)} not installed): {TRAIN_INSTALL}"
        )
