"""VQ-VAE-2 with gated PixelCNN priors: the plugin (wiring only) and the registry hook.

Stages: `vqvae` (the autoencoder), `prior_top` and `prior_bottom` (the priors, trained on
codes of the frozen autoencoder: extracted once into the run's cache, or from each batch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import zoo
from zoo.data.base import first_images
from zoo.outputs import SampleOutput
from zoo.plugin import Component, LossFn, MetricSet, ModelPlugin, Optimizer, Stage, StageContext, Validation
from zoo_vqvae2_pixelcnn import data, evaluation, export
from zoo_vqvae2_pixelcnn.config import PRESETS, VQVAE2Config, VQVAE2SampleOptions
from zoo_vqvae2_pixelcnn.importer import RosinalityVQVAEImporter
from zoo_vqvae2_pixelcnn.losses import prior_bottom_loss, prior_top_loss, vqvae_loss
from zoo_vqvae2_pixelcnn.model import VQVAE2PixelCNN

GRID_IMAGES = 8  # held-out images in the vqvae stage's reconstruction grid
SAMPLE_GRID = {"n": 6, "seed": 0}  # images per class in the priors' sample grids

Context = StageContext[VQVAE2Config, VQVAE2PixelCNN]


class VQVAE2PixelCNNPlugin(ModelPlugin[VQVAE2Config, VQVAE2SampleOptions, VQVAE2PixelCNN]):
    name = "vqvae2_pixelcnn"
    description = "VQ-VAE-2 (two code levels) with gated PixelCNN priors; fast cached sampling"
    Config = VQVAE2Config
    SampleOptions = VQVAE2SampleOptions
    presets = PRESETS
    default_preset = "digits32"

    def build(self, config: VQVAE2Config) -> VQVAE2PixelCNN:
        return VQVAE2PixelCNN(config)

    def stages(self, config: VQVAE2Config) -> list[Stage[VQVAE2Config, VQVAE2PixelCNN]]:
        return [
            part_stage(
                config,
                "vqvae",
                vqvae_loss,
                lambda context, split: data.image_set(context.config, split),
                on_start=lambda model, context: model.vqvae.init_codebooks(data.first_images(context)),
            ),
            # prior_top's samples are drawn with the bottom prior as it is then (untrained):
            # their layout shows what the top prior learnt, their detail does not yet.
            part_stage(config, "prior_top", prior_top_loss, data.prior_dataset, sample_options=SAMPLE_GRID),
            part_stage(config, "prior_bottom", prior_bottom_loss, data.prior_dataset, sample_options=SAMPLE_GRID),
        ]

    def blocks(self, model: VQVAE2PixelCNN) -> list[nn.Module]:
        """The autoencoder's four conv stacks (each a chain of strided convs and residual
        blocks, one unit so a checkpoint keeps only its input) and both priors' gated
        layers. Left out: the quantisers (their forward moves the EMA codebooks and code usage in training)."""
        vqvae = model.vqvae
        stacks = [vqvae.encoder_bottom, vqvae.encoder_top, vqvae.decoder_top, vqvae.decoder]
        return [*stacks, *model.prior_top.gated_layers(), *model.prior_bottom.gated_layers()]

    def stage_grid(
        self,
        model: VQVAE2PixelCNN,
        config: VQVAE2Config,
        stage: Stage[VQVAE2Config, VQVAE2PixelCNN],
        device: torch.device,
    ) -> SampleOutput | None:
        """vqvae: held-out images above their reconstructions; the priors: samples."""
        if stage.name == "vqvae":
            images = first_images(data.image_set(config, "test"), GRID_IMAGES).to(device)
            return self.reconstruction_grid(images, model.vqvae(images).reconstruction)
        return super().stage_grid(model, config, stage, device)

    def evaluate(self, model: VQVAE2PixelCNN, config: VQVAE2Config, device: torch.device) -> dict[str, float]:
        return evaluation.evaluate(model, config, device, lambda options: self.sample(model, config, options, device))

    def metric_sample_options(self, config: VQVAE2Config, first: int, count: int, seed: int) -> VQVAE2SampleOptions:
        return evaluation.metric_sample_options(config, first, count, seed)

    def metric_sets(self, model: VQVAE2PixelCNN, config: VQVAE2Config, device: torch.device) -> list[MetricSet]:
        return evaluation.metric_sets(model, config, device)

    def export_metric_sets(self, runtime: Any, config: VQVAE2Config) -> list[MetricSet]:
        return evaluation.export_metric_sets(runtime, config)

    def export_components(self, model: VQVAE2PixelCNN, config: VQVAE2Config) -> list[Component]:
        return export.export_components(model, config)


def part_stage(
    config: VQVAE2Config,
    part: str,
    loss: LossFn[VQVAE2PixelCNN],
    dataset: Callable[[Context, str], Dataset],
    sample_options: dict[str, Any] | None = None,
    on_start: Callable[[VQVAE2PixelCNN, Context], None] | None = None,
) -> Stage[VQVAE2Config, VQVAE2PixelCNN]:
    """A stage that trains `model.<part>` alone on `dataset(context, split)`."""
    spec = getattr(config.training, part)
    optimizer = Optimizer(
        part, lambda model: [getattr(model, part)], loss, spec.lr, warmup_steps=spec.warmup_steps, min_lr_ratio=0.05
    )

    def split(name: str) -> Callable[[Context], Dataset]:
        return lambda context: dataset(context, name)

    validation = Validation(split("test"), spec.validation_every, spec.patience) if spec.validation_every else None
    return Stage(
        part,
        [optimizer],
        spec.steps,
        spec.batch_size,
        split("train"),
        validation=validation,
        sample_options=sample_options,
        on_start=on_start,
    )


@zoo.hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    return [VQVAE2PixelCNNPlugin()]


@zoo.hookimpl
def zoo_register_importers() -> list[RosinalityVQVAEImporter]:
    return [RosinalityVQVAEImporter()]
