"""The `var` model plugin: VAR's stages, evaluation and export wired to the core, and the hook."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import zoo
from zoo.data.base import first_images
from zoo.outputs import SampleOutput
from zoo.plugin import Component, ExportAssets, MetricSet, ModelPlugin, Optimizer, Stage, Validation
from zoo_var import evaluation, export
from zoo_var.config import PRESETS, VARConfig, VARSampleOptions
from zoo_var.data import image_dataset, transformer_dataset
from zoo_var.importer import OfficialVARImporter
from zoo_var.losses import TokenizerLoss, TransformerLoss
from zoo_var.model import VARModel

GRID_IMAGES = 8  # held-out images in the tokenizer stage's reconstruction grid

# As the official code: no weight decay on the position/level embeddings and the AdaLN gains.
NO_WEIGHT_DECAY = ("pos_start", "position_embedding", "level_embedding", "ada_gss", "log_scale")


class VARPlugin(ModelPlugin[VARConfig, VARSampleOptions, VARModel]):
    name = "var"
    description = "VAR: class-conditional image generation by next-scale prediction (multi-scale VQVAE + transformer)"
    Config = VARConfig
    SampleOptions = VARSampleOptions
    presets = PRESETS
    default_preset = "digits"

    def build(self, config: VARConfig) -> VARModel:
        return VARModel(config)

    def stages(self, config: VARConfig) -> list[Stage[VARConfig, VARModel]]:
        return [self._tokenizer_stage(config), self._transformer_stage(config)]

    def blocks(self, model: VARModel) -> list[nn.Module]:
        """The AdaLN blocks and the tokenizer's encoder/decoder levels. Left out: the
        quantiser (its forward updates code usage and restarts dead codes in training) and
        the discriminator (BatchNorm keeps running statistics)."""
        tokenizer = model.tokenizer
        return [*tokenizer.encoder.levels(), *tokenizer.decoder.levels(), *model.transformer.blocks]

    @staticmethod
    def _tokenizer_stage(config: VARConfig) -> Stage[VARConfig, VARModel]:
        training = config.tokenizer_training
        loss, gan = TokenizerLoss(config), training.gan_weight > 0
        optimizers: list[Optimizer[VARModel]] = [
            Optimizer(
                "tokenizer",
                lambda model: [model.tokenizer],
                loss,
                training.lr,
                algorithm="adam",
                betas=(0.5, 0.9) if gan else (0.9, 0.99),
                warmup_steps=training.warmup_steps,
                min_lr_ratio=0.1,
            ),
        ]
        if gan:
            optimizers.append(
                Optimizer(
                    "discriminator",
                    lambda model: [model.gan_discriminator],
                    loss.discriminator,
                    training.gan_lr,
                    algorithm="adam",
                    betas=(0.5, 0.9),
                    schedule="constant",
                    start_step=training.gan_start,
                )
            )
        return Stage(
            "tokenizer",
            optimizers,
            training.steps,
            training.batch_size,
            dataset=lambda context: image_dataset(context.config, "train"),
        )

    @staticmethod
    def _transformer_stage(config: VARConfig) -> Stage[VARConfig, VARModel]:
        training = config.transformer_training
        optimizer = Optimizer(
            "transformer",
            lambda model: [model.transformer],
            TransformerLoss(training.label_smoothing),
            lr=training.lr_per_256 * training.batch_size / 256,  # the paper's rule: lr = base lr * batch / 256
            algorithm="adamw",
            betas=training.betas,
            weight_decay=training.weight_decay,
            no_weight_decay=NO_WEIGHT_DECAY,
            warmup_steps=training.warmup_steps,
            min_lr_ratio=0.01,
            clip_grad_norm=training.clip_grad_norm,
        )
        return Stage(
            "transformer",
            [optimizer],
            training.steps,
            training.batch_size,
            dataset=lambda context: transformer_dataset(context, "train"),
            validation=Validation(lambda context: transformer_dataset(context, "test"), every=training.validate_every),
            sample_options={"n": 4},
        )

    def stage_grid(
        self, model: VARModel, config: VARConfig, stage: Stage[VARConfig, VARModel], device: torch.device
    ) -> SampleOutput | None:
        """tokenizer: held-out images above their reconstructions; transformer: samples."""
        if stage.name == "tokenizer":
            images = first_images(image_dataset(config, "test"), GRID_IMAGES).to(device)
            return self.reconstruction_grid(images, evaluation.reconstruct(model, images))
        return super().stage_grid(model, config, stage, device)

    def evaluate(self, model: VARModel, config: VARConfig, device: torch.device) -> dict[str, float]:
        """Tokenizer PSNR and codebook usage, transformer token accuracy / NLL on the held-out
        split; for the digits, the classifier accuracy of samples per class (evaluation.py)."""
        return evaluation.evaluate(model, config, device, lambda options: self.sample(model, config, options, device))

    def metric_sample_options(self, config: VARConfig, first: int, count: int, seed: int) -> VARSampleOptions:
        return evaluation.metric_sample_options(config, first, count, seed)

    def metric_sets(self, model: VARModel, config: VARConfig, device: torch.device) -> list[MetricSet]:
        return evaluation.metric_sets(model, config, device)

    def export_metric_sets(self, runtime: Any, config: VARConfig) -> list[MetricSet]:
        return evaluation.export_metric_sets(runtime, config)

    def export_components(self, model: VARModel, config: VARConfig) -> list[Component]:
        return export.export_components(model, config)

    def export_assets(self, model: VARModel, config: VARConfig) -> ExportAssets:
        return export.export_assets(model, config)


@zoo.hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    return [VARPlugin()]


@zoo.hookimpl
def zoo_register_importers() -> list[OfficialVARImporter]:
    return [OfficialVARImporter()]
