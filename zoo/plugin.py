"""The interface every model plugin implements.

A plugin module hands the registry `ModelPlugin` objects through the `zoo_register_models`
hook (see `zoo.hookspecs`). Everything the core does with a model goes through this class:
the trainer runs its `stages`, `zoo sample` calls `sample`, `zoo eval` calls `evaluate`,
an exporter (see `zoo.exporter`; ONNX by default) writes `export_components`, and `zoo run`
drives the exported graphs with the torch-free loop its `zoo.runtimes` entry point names.

A plugin subclasses `ModelPlugin[ItsConfig, ItsSampleOptions, ItsModel]`, so its methods
take its own types; the stages it returns are `Stage[ItsConfig, ItsModel]`, whose loss
functions, module selectors and data builders see them too. The core holds plugins as
`ModelPlugin[Any, Any, Any]`: it only passes each plugin what that plugin built or validated.

This module imports no torch at run time, so the registry can list models cheaply.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from zoo.components import Component, ExportAssets  # defined in a leaf module; re-exported here
from zoo.config import ConfigT, SampleOptionsT
from zoo.outputs import SampleOutput
from zoo.version import __version__

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset

Batch = dict[str, Any]
"""A collated batch: `image` (B, 3, H, W) in [-1, 1], `label` (B,), `caption` list[str], ..."""

ModelT = TypeVar("ModelT", bound="nn.Module")
"""The module a plugin's `build` returns: what its stages' functions receive."""


@dataclass
class StepContext:
    """What a loss function may know about the step it runs in."""

    step: int  # 0-based step within the stage
    total_steps: int
    device: torch.device
    # Shared by the optimizers of one step, e.g. a GAN's generator output reused by its
    # discriminator update. Cleared before every step.
    cache: dict[str, Any] = field(default_factory=dict)


LossFn = Callable[[ModelT, Batch, StepContext], Mapping[str, "torch.Tensor"]]
"""Returns named scalars; the trainer back-propagates `loss` and logs every entry."""


@dataclass
class Optimizer(Generic[ModelT]):
    """One optimizer of a stage: the modules it trains, the loss it minimises, its schedule.

    A stage with several optimizers (a GAN's generator and discriminator) runs them in
    order at every step, each with its own backward pass, clipping and schedule.
    """

    name: str
    modules: Callable[[ModelT], list[nn.Module]]
    loss: LossFn[ModelT]
    lr: float
    algorithm: Literal["adamw", "adam"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # never applied to biases, norms and gains (parameters with ndim < 2)
    no_weight_decay: tuple[str, ...] = ()  # parameter-name substrings also exempt from weight decay
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # the cosine schedule ends at lr * min_lr_ratio
    clip_grad_norm: float | None = None
    start_step: int = 0  # first step at which this optimizer updates (e.g. a GAN's disc_start)
    every: int = 1  # update every `every` steps


@dataclass
class Validation(Generic[ConfigT, ModelT]):
    """Held-out loss measured during a stage; optionally stops the stage early."""

    dataset: Callable[[StageContext[ConfigT, ModelT]], Dataset]
    every: int
    patience: int | None = None  # evaluations without improvement before stopping; None never stops
    batches: int = 8


@dataclass
class StageContext(Generic[ConfigT, ModelT]):
    """What a stage's data builder may use: the model (with earlier stages' weights)."""

    model: ModelT
    config: ConfigT
    cache_dir: Path  # inside the run directory; survives resumes
    device: torch.device


@dataclass
class Stage(Generic[ConfigT, ModelT]):
    """One training stage. Parameters of modules no optimizer names stay frozen."""

    name: str
    optimizers: list[Optimizer[ModelT]]
    steps: int
    batch_size: int
    dataset: Callable[[StageContext[ConfigT, ModelT]], Dataset]
    ema_decay: float | None = None  # EMA of trained weights, copied into the model at the end
    validation: Validation[ConfigT, ModelT] | None = None
    # Options of the sample grid `ModelPlugin.stage_grid` draws by default (at the stage's
    # end and every `sample_every` steps); None: no sample grid unless the plugin overrides it.
    sample_options: dict[str, Any] | None = None
    # Runs once after the stage's data is built and before its first step (e.g. to
    # initialise a codebook from data); must be deterministic given the seed.
    on_start: Callable[[ModelT, StageContext[ConfigT, ModelT]], None] | None = None


@dataclass
class MadeImages:
    """One batch of a `MetricSet`: (B, H, W, 3) uint8 images the model made, the real images
    their distribution is measured against, and optionally the image each one was made from
    (a style transfer's content photo), for a content measure (SSIM)."""

    outputs: np.ndarray
    references: np.ndarray
    sources: np.ndarray | None = None


@dataclass
class MetricSet:
    """Images a model makes from held-out inputs, for the distribution metrics (`zoo eval
    --metrics rfid,fid`): `reconstruction` sets (a tokenizer's or autoencoder's outputs
    against its inputs) give the reconstruction FID `rfid/NAME`; a `transfer` set (a style
    transfer's outputs against the style images) gives `fid/NAME` and, with sources,
    `ssim/NAME`. `batches()` yields the held-out split batch by batch, the same every call."""

    name: str  # the stage whose network makes them: "tokenizer", "vqgan_photo", "transfer"
    kind: Literal["reconstruction", "transfer"]
    batches: Callable[[], Iterator[MadeImages]]


class ModelPlugin(Generic[ConfigT, SampleOptionsT, ModelT]):
    """Base class of a model plugin. Subclasses set the class attributes and override
    `build`, `stages`, `evaluate` and `export_components`; `sample` is inherited: it runs
    the plugin's torch-free runtime loop on the torch components, so `zoo sample` and
    `zoo run` share one sampling algorithm.

    The type parameters are the plugin's `Config`, `SampleOptions` and the module `build`
    returns: `class VARPlugin(ModelPlugin[VARConfig, VARSampleOptions, VARModel])`."""

    name: ClassVar[str]
    description: ClassVar[str]
    version: ClassVar[str] = __version__  # a third-party plugin sets its own
    # Class attributes like the others; not ClassVar only because a ClassVar cannot name a
    # type parameter.
    Config: type[ConfigT]
    SampleOptions: type[SampleOptionsT]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    default_preset: ClassVar[str | None] = None
    # The torch-free sampling loop is declared once, where `zoo run` finds it without torch:
    # the entry point named after the model in the group `zoo.runtimes` of the plugin's
    # distribution ("package.module:Class", a zoo.runtime.loop.ModelRuntime subclass).
    # Only a plugin with no installed distribution (a module a registry file names) sets it
    # here instead; where both exist they must agree (`runtime_target`).
    runtime: ClassVar[str | None] = None

    def build(self, config: ConfigT) -> ModelT:
        raise NotImplementedError

    def stages(self, config: ConfigT) -> list[Stage[ConfigT, ModelT]]:
        raise NotImplementedError

    def evaluate(self, model: ModelT, config: ConfigT, device: torch.device) -> dict[str, float]:
        raise NotImplementedError

    def export_components(self, model: ModelT, config: ConfigT) -> list[Component]:
        raise NotImplementedError

    def metric_sample_options(self, config: ConfigT, first: int, count: int, seed: int) -> SampleOptionsT | None:
        """Options that draw images `first .. first + count - 1` of the model's sample set for
        the distribution metrics (`zoo eval --metrics fid,isc,prc,kid`): `count` images, drawn
        with the sampling options the model's paper measures with, class-balanced for a class
        model (image i of class i mod classes, so any N that is a multiple of the classes has
        N / classes per class). `sample` (torch) or the export's runtime (onnxruntime) draws
        them. None (default): the model draws no such set."""
        return None

    def metric_sets(self, model: ModelT, config: ConfigT, device: torch.device) -> list[MetricSet]:
        """What the model makes from held-out inputs, for reconstruction FID and a style
        transfer's FID (see `MetricSet`). Default: none."""
        return []

    def export_metric_sets(self, runtime: Any, config: ConfigT) -> list[MetricSet]:
        """`metric_sets` of an export directory: the same held-out sets, made by the exported
        graphs through the model's runtime loop (`runtime`, on onnxruntime), for each set
        whose graphs the export holds. Default: none."""
        return []

    def export_assets(self, model: ModelT, config: ConfigT) -> ExportAssets:
        return ExportAssets()

    def blocks(self, model: ModelT) -> list[nn.Module]:
        """The model's repeated units: what `scale.shard` shards one by one (FSDP2), what
        `scale.activation_checkpointing` recomputes and `scale.compile` compiles; typically
        transformer blocks and the resolution levels of a conv encoder/decoder.

        A block must be a module whose forward has no side effect a second call would
        repeat (no running statistics, no codebook updates): checkpointing runs it twice.
        Default: none (the model is one unit; the levers have nothing to act on)."""
        return []

    def check_data(self, config: ConfigT) -> None:
        """Raise DataError if a data source of any stage is unusable. The trainer calls this
        before the first stage, so a later stage's bad folder costs no training time.
        Override when a stage after the first reads data the first stage does not."""

    def stage_names(self, config: ConfigT) -> list[str]:
        return [stage.name for stage in self.stages(config)]

    def component_names(self, config: ConfigT) -> list[str]:
        """What `export_components` returns for this config, derived from it on a model
        built on the meta device (no memory, no weights), so listings never disagree with
        what an export writes."""
        import torch

        with torch.device("meta"):
            model = self.build(config)
        try:
            return [component.name for component in self.export_components(model, config)]
        except NotImplementedError:  # a model that exports nothing
            return []

    def runtime_target(self) -> str:
        """ "package.module:Class" of the model's sampling loop: the installed `zoo.runtimes`
        entry point of its name (what `zoo run` imports), else `runtime`."""
        from zoo.runtime_entry_points import plugin_runtime

        return plugin_runtime(self.name, self.runtime)

    def runtime_class(self) -> type:
        module_name, _, attr = self.runtime_target().partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def runtime_for(self, model: ModelT, config: ConfigT, device: torch.device) -> Any:
        """The plugin's torch-free sampling loop driving the torch components: what `sample`
        runs, and what `evaluate` may use for the loop's other methods."""
        from zoo.torch_components import TorchComponents

        components = TorchComponents(self.export_components(model, config), device)
        assets = self.export_assets(model, config)
        return self.runtime_class()(components, config.model_dump(mode="json"), assets.arrays, assets.files)

    def sample(
        self,
        model: ModelT,
        config: ConfigT,
        options: SampleOptionsT,
        device: torch.device,
    ) -> SampleOutput:
        return self.runtime_for(model, config, device).sample(options)

    def stage_grid(
        self, model: ModelT, config: ConfigT, stage: Stage[ConfigT, ModelT], device: torch.device
    ) -> SampleOutput | None:
        """The picture of `stage`, written to `samples/STAGE.png` when it ends and to
        `samples/STAGE/step_N.png` every `sample_every` steps (the model is in eval mode,
        under no_grad, with the torch RNG restored afterwards).

        Default: a sample drawn with the stage's `sample_options`, or None (no grid) when
        it has none. Override for stages a sample does not show: an autoencoder stage
        returns `zoo.outputs.reconstruction_grid(inputs, reconstructions)` of held-out
        images (inputs in the top row, reconstructions below)."""
        if stage.sample_options is None:
            return None
        return self.sample(model, config, self.SampleOptions(**stage.sample_options), device)

    @staticmethod
    def reconstruction_grid(images: torch.Tensor, reconstructions: torch.Tensor) -> SampleOutput:
        """(N, 3, H, W) images in [-1, 1] in the top row, their reconstructions below: the
        grid of an autoencoder stage (see `stage_grid`)."""
        from zoo.outputs import reconstruction_grid, to_uint8

        def pixels(tensor: torch.Tensor) -> Any:
            return to_uint8(tensor.detach().float().clamp(-1, 1).cpu().numpy())

        return reconstruction_grid(pixels(images), pixels(reconstructions))
