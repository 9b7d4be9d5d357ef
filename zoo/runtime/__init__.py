"""Run an export directory on onnxruntime, without torch.

    import zoo.runtime

    model = zoo.runtime.load("exports/var_digits")        # CUDA if usable, else CPU
    output = model.sample({"count": 8, "seed": 0})       # the model's SampleOptions
    output.save("samples.png")
    for step in model.sample_progressive({"seed": 0}):   # VAR: each scale's images, then the output
        step.grid().show()
    model.components("decoder", indices=indices)          # one graph, numpy in and out

`load` verifies the directory (manifest version and entries, every file's sha256, and with
`verify_key` the manifest's signature), imports the torch-free sampling loop that the
installed plugin for the manifest's model declares (never a module the manifest names;
see zoo.runtime.discovery), and opens one onnxruntime session per component. Nothing under `zoo.runtime` imports torch; onnxruntime itself is
imported by `load`, so plugins can import `zoo.runtime.loop` cheaply.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from zoo.config import SampleOptionsBase, validate
from zoo.errors import ConfigError, ExportError, ZooError, first_line
from zoo.outputs import SampleOutput
from zoo.runtime.discovery import runtime_class
from zoo.runtime.loop import Components, ModelRuntime, NoProgress, ProgressCallback, sampling_progress
from zoo.runtime.manifest import load_assets, read_manifest, verify_files


class LoadedExport:
    """An export directory ready to run.

    Attributes: `manifest` (the parsed manifest.json), `config` (the model's resolved
    config, a dict), `components` (call one graph: `components(name, **arrays)`),
    `runtime` (the plugin's sampling loop), `options_class` (its SampleOptions),
    `providers` (which onnxruntime providers were tried and which one runs).
    Public methods of the plugin's runtime (e.g. `reconstruct`, `caption`) are
    available on this object too.
    """

    def __init__(
        self,
        export_dir: Path,
        manifest: dict[str, Any],
        components: Components,
        runtime: ModelRuntime,
        options_class: type[SampleOptionsBase],
        providers: dict[str, Any],
    ) -> None:
        self.export_dir = export_dir
        self.manifest = manifest
        self.config: dict[str, Any] = manifest["config"]
        self.components = components
        self.runtime = runtime
        self.options_class = options_class
        self.providers = providers

    @property
    def model(self) -> str:
        return self.manifest["model"]

    def sample(
        self, options: Mapping[str, Any] | SampleOptionsBase | None = None, on_step: ProgressCallback | None = None
    ) -> SampleOutput:
        """Options as a dict (validated like `zoo sample`'s flags) or a SampleOptions.
        on_step: called with the images after each step (VAR: each scale, the last one
        included), for loops that report progress (`runtime.reports_progress`); others refuse it."""
        options = self._validated(options)
        if on_step is None:
            return self._sampled(options)
        if not self.runtime.reports_progress:
            raise NoProgress(f"the {self.model} loop does not report progress: sample without it")
        with sampling_progress(on_step):
            return self._sampled(options)

    def sample_progressive(
        self, options: Mapping[str, Any] | SampleOptionsBase | None = None
    ) -> Iterator[SampleOutput]:
        """Yields the images after each step, then the final SampleOutput (the one `sample`
        returns: same images, with its extras); the loop runs in a thread meanwhile."""
        validated = self._validated(options)
        if not self.runtime.reports_progress:
            raise NoProgress(f"the {self.model} loop does not report progress: use sample")
        steps: queue.Queue[tuple[str, Any]] = queue.Queue()

        def run() -> None:
            try:
                steps.put(("done", self.sample(validated, on_step=lambda step: steps.put(("step", step)))))
            except BaseException as error:  # handed to the consumer, raised there
                steps.put(("error", error))

        threading.Thread(target=run, name="zoo-sample-progressive", daemon=True).start()
        while True:
            kind, value = steps.get()
            if kind == "error":
                raise value
            yield value
            if kind == "done":
                return

    def _validated(self, options: Mapping[str, Any] | SampleOptionsBase | None) -> SampleOptionsBase:
        if options is None:
            options = {}
        if isinstance(options, SampleOptionsBase):
            if not isinstance(options, self.options_class):
                raise ConfigError(
                    f"{self.model} takes {self.options_class.__name__} options, got {type(options).__name__}"
                )
        else:
            options = validate(self.options_class, options, what="sample option")
        return options

    def _sampled(self, options: SampleOptionsBase) -> SampleOutput:
        try:
            return self.runtime.sample(options)
        except ZooError:
            raise
        except (KeyError, IndexError, TypeError, ValueError) as error:  # pydantic's ValidationError too
            # A manifest config field of another type or an asset of another shape, each with a
            # valid checksum: one line naming the export (zoo run, zoo serve, Python alike).
            raise ExportError(
                f"{self.export_dir}: the {self.model} loop cannot use this export "
                f"({first_line(error, 160, with_type=True)}); its config or assets do not fit it: export again"
            ) from None

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: hand out the runtime's public methods.
        if name.startswith("_") or "runtime" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.runtime, name)

    def __repr__(self) -> str:
        return f"LoadedExport({self.model!r}, {str(self.export_dir)!r}, provider={self.providers['used']!r})"


def load(
    export_dir: str | Path,
    provider: str | None = None,
    graph_optimization_level: str = "all",
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    verify: bool = True,
    verify_key: str | Path | None = None,
) -> LoadedExport:
    """Open an export directory (see `LoadedExport`).

    provider: None picks CUDA when it really works, else CPU; "cpu", "cuda" or
    "tensorrt" forces one (an error if it cannot start). graph_optimization_level:
    "disable", "basic", "extended" or "all". verify=False skips the sha256 checks
    (they read every byte once). verify_key: an Ed25519 public key (PEM file) whose
    signature `manifest.sig` must carry (`zoo export --sign`); it implies verify=True,
    since the signature vouches for the files only through their sha256.
    """
    from zoo.runtime.sessions import OnnxComponents, binding_device, open_sessions, session_options

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir, Path(verify_key) if verify_key is not None else None)
    if verify or verify_key is not None:
        verify_files(export_dir, manifest)
    loop_class = runtime_class(manifest["model"], export_dir)
    options = session_options(graph_optimization_level, intra_op_threads, inter_op_threads)
    graphs = {name: export_dir / spec["file"] for name, spec in manifest["components"].items()}
    sessions, report = open_sessions(graphs, provider, options)
    components = OnnxComponents(sessions, manifest["components"], binding_device(report.used))
    arrays, files = load_assets(export_dir, manifest)
    runtime = loop_class(components, manifest["config"], arrays, files)
    return LoadedExport(export_dir, manifest, components, runtime, loop_class.options_class, report.as_dict())


__all__ = ["Components", "LoadedExport", "ModelRuntime", "load"]
