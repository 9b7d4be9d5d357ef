"""The QuantArt plugin: its three stages and the registry hook; the parts live in config.py,
model.py, losses.py, data.py, evaluation.py and export.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import zoo
from zoo.importer import Importer
from zoo.outputs import SampleOutput
from zoo.plugin import Component, ExportAssets, LossFn, MetricSet, ModelPlugin, Optimizer, Stage, StageContext
from zoo_quantart import export
from zoo_quantart.config import PRESETS, QuantArtConfig, QuantArtSampleOptions
from zoo_quantart.data import check_data, code_pairs, domain_images, sample_images, stack_images
from zoo_quantart.evaluation import evaluate_pairs, export_metric_sets, metric_sets
from zoo_quantart.importer import OfficialQuantArtImporter, TamingVQGANImporter
from zoo_quantart.losses import transfer_losses, vqgan_losses
from zoo_quantart.model import Domain, QuantArt

CODEBOOK_INIT_IMAGES = 64  # images whose encoder outputs seed each VQGAN codebook
GRID_IMAGES = 8  # held-out images in a VQGAN stage's reconstruction grid


class QuantArtPlugin(ModelPlugin[QuantArtConfig, QuantArtSampleOptions, QuantArt]):
    name = "quantart"
    description = "QuantArt style transfer: a transfer module between the codes of a photo VQGAN and an art VQGAN"
    Config = QuantArtConfig
    SampleOptions = QuantArtSampleOptions
    presets = PRESETS
    default_preset = "tiny"

    def build(self, config: QuantArtConfig) -> QuantArt:
        return QuantArt(config)

    def stages(self, config: QuantArtConfig) -> list[Stage[QuantArtConfig, QuantArt]]:
        return [vqgan_stage(config, "photo"), vqgan_stage(config, "art"), transfer_stage(config)]

    def blocks(self, model: QuantArt) -> list[nn.Module]:
        """Both VQGANs' encoder/decoder levels and the style transfer blocks. Left out: the
        quantisers (their forward updates code usage in training) and both PatchGANs
        (BatchNorm keeps running statistics, which a recomputation would update twice)."""
        return [
            *model.photo.encoder.levels(),
            *model.photo.decoder.levels(),
            *model.art.encoder.levels(),
            *model.art.decoder.levels(),
            *model.transfer.blocks,
        ]

    def check_data(self, config: QuantArtConfig) -> None:
        check_data(config)

    def stage_grid(
        self, model: QuantArt, config: QuantArtConfig, stage: Stage[QuantArtConfig, QuantArt], device: torch.device
    ) -> SampleOutput | None:
        """vqgan_photo / vqgan_art: held-out photos / style images above their reconstructions;
        transfer: the held-out content x style grid."""
        if stage.name in ("vqgan_photo", "vqgan_art"):
            domain: Domain = "photo" if stage.name == "vqgan_photo" else "art"
            images = sample_images(config, "content" if domain == "photo" else "style")[:GRID_IMAGES].to(device)
            return self.reconstruction_grid(images, model.vqgan(domain)(images)[0])
        return super().stage_grid(model, config, stage, device)

    def evaluate(self, model: QuantArt, config: QuantArtConfig, device: torch.device) -> dict[str, float]:
        """Style and content metrics of held-out pairs at balances (1, 1); see evaluation.py."""
        return evaluate_pairs(model, config, device)

    def metric_sets(self, model: QuantArt, config: QuantArtConfig, device: torch.device) -> list[MetricSet]:
        """rFID of each VQGAN; FID of the stylised pairs against the style images, and SSIM to the content."""
        return metric_sets(model, config, device)

    def export_metric_sets(self, runtime: Any, config: QuantArtConfig) -> list[MetricSet]:
        """The transfer set and the art VQGAN's rFID through the export's graphs."""
        return export_metric_sets(runtime, config)

    def export_components(self, model: QuantArt, config: QuantArtConfig) -> list[Component]:
        return export.export_components(model, config)

    def export_assets(self, model: QuantArt, config: QuantArtConfig) -> ExportAssets:
        return export.export_assets(model, config)


def adam(
    name: str,
    modules: Callable[[QuantArt], list[nn.Module]],
    loss: LossFn[QuantArt],
    lr: float,
    start_step: int = 0,
) -> Optimizer[QuantArt]:
    """taming's and QuantArt's optimizer, for every generator and discriminator."""
    return Optimizer(
        name, modules, loss, lr, algorithm="adam", betas=(0.5, 0.9), min_lr_ratio=0.1, start_step=start_step
    )


def vqgan_stage(config: QuantArtConfig, domain: Domain) -> Stage[QuantArtConfig, QuantArt]:
    training = config.training.vqgan_photo if domain == "photo" else config.training.vqgan_art
    generator_loss, discriminator_loss = vqgan_losses(config, domain)

    def init_weights(model: QuantArt, ctx: StageContext[QuantArtConfig, QuantArt]) -> None:
        if domain == "art" and ctx.config.art_from_photo:
            # The paper fine-tunes its WikiArt VQGAN from the ImageNet one: the two code
            # spaces start aligned, which the transfer stage's content loss relies on.
            model.art.load_state_dict(model.photo.state_dict())
        else:
            model.vqgan(domain).init_codebook(
                stack_images(domain_images(ctx.config, domain), CODEBOOK_INIT_IMAGES).to(ctx.device)
            )

    return Stage(
        name=f"vqgan_{domain}",
        optimizers=[
            adam("generator", lambda model: model.vqgan(domain).generator_modules(), generator_loss, training.lr),
            adam(
                "discriminator",
                lambda model: [model.vqgan(domain).discriminator],
                discriminator_loss,
                training.lr,
                start_step=config.discriminator.disc_start,
            ),
        ],
        steps=training.steps,
        batch_size=training.batch_size,
        dataset=lambda ctx: domain_images(ctx.config, domain),
        on_start=init_weights,
    )


def transfer_stage(config: QuantArtConfig) -> Stage[QuantArtConfig, QuantArt]:
    training = config.training.transfer
    transfer_loss, discriminator_loss = transfer_losses(config)
    return Stage(
        name="transfer",
        optimizers=[
            adam("transfer", lambda model: [model.transfer], transfer_loss, training.lr),
            adam(
                "latent_discriminator",
                lambda model: [model.latent_discriminator],
                discriminator_loss,
                training.lr,
                start_step=config.transfer.disc_start,
            ),
        ],
        steps=training.steps,
        batch_size=training.batch_size,
        dataset=code_pairs,
        sample_options={},  # the held-out content x style grid
    )


@zoo.hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    return [QuantArtPlugin()]


@zoo.hookimpl
def zoo_register_importers() -> list[Importer]:
    return [TamingVQGANImporter(), OfficialQuantArtImporter()]
