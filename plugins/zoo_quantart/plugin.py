"""The QuantArt plugin: stages, evaluation, export components and the registry hook."""

from __future__ import annotations

import torch

import zoo
from zoo.nn.quantize import init_codebook_from
from zoo.outputs import to_uint8
from zoo.plugin import Component, ExportAssets, ModelPlugin, Optimizer, Stage, StageContext
from zoo_quantart.config import PRESETS, QuantArtConfig, QuantArtSampleOptions
from zoo_quantart.data import code_pairs, content_images, stack_images, style_images
from zoo_quantart.evaluation import evaluate_pairs
from zoo_quantart.losses import transfer_losses, vqgan_losses
from zoo_quantart.model import VQGAN, DecodeCodes, EncodeCodes, QuantArt, Stylize, TransferCodes

ADAM_BETAS = (0.5, 0.9)  # taming's and QuantArt's choice for both generator and discriminator
ENCODE_BATCH = 8
CODEBOOK_INIT_IMAGES = 64  # images whose encoder outputs seed each VQGAN codebook


class QuantArtPlugin(ModelPlugin):
    name = "quantart"
    description = "QuantArt style transfer: a transfer module between the codes of a photo VQGAN and an art VQGAN"
    version = "0.1.0"
    Config = QuantArtConfig
    SampleOptions = QuantArtSampleOptions
    presets = PRESETS
    default_preset = "tiny"
    runtime = "zoo_quantart.runtime:QuantArtRuntime"
    components = ("photo_encoder", "art_encoder", "transfer", "art_decoder", "stylize")

    def build(self, config: QuantArtConfig) -> QuantArt:
        return QuantArt(config)

    def stages(self, config: QuantArtConfig) -> list[Stage]:
        return [
            self._vqgan_stage(config, "photo"),
            self._vqgan_stage(config, "art"),
            self._transfer_stage(config),
        ]

    @staticmethod
    def _vqgan_stage(config: QuantArtConfig, domain: str) -> Stage:
        training = config.training.vqgan_photo if domain == "photo" else config.training.vqgan_art
        generator_loss, discriminator_loss = vqgan_losses(config, domain)

        def vqgan(model: QuantArt) -> VQGAN:
            return model.photo if domain == "photo" else model.art

        def images(ctx: StageContext):
            return content_images(ctx.config) if domain == "photo" else style_images(ctx.config)

        @torch.no_grad()
        def init_weights(model: QuantArt, ctx: StageContext) -> None:
            if domain == "art" and ctx.config.art_from_photo:
                # The paper fine-tunes its WikiArt VQGAN from the ImageNet one: the two code
                # spaces start aligned, which the transfer stage's content loss relies on.
                model.art.load_state_dict(model.photo.state_dict())
                return
            # Codes drawn from encoder outputs all start in use; taming's tiny uniform init
            # collapses to a handful of codes in a short CPU run.
            network = vqgan(model)
            batch = stack_images(images(ctx), CODEBOOK_INIT_IMAGES).to(ctx.device)
            features = torch.cat([network.quant_conv(network.encoder(chunk)) for chunk in batch.split(ENCODE_BATCH)])
            init_codebook_from(network.quantizer, features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))

        return Stage(
            name=f"vqgan_{domain}",
            optimizers=[
                Optimizer("generator", lambda model: vqgan(model).generator_modules(), generator_loss,
                          training.lr, algorithm="adam", betas=ADAM_BETAS, min_lr_ratio=0.1),
                Optimizer("discriminator", lambda model: [vqgan(model).discriminator], discriminator_loss,
                          training.lr, algorithm="adam", betas=ADAM_BETAS, min_lr_ratio=0.1,
                          start_step=config.discriminator.disc_start),
            ],
            steps=training.steps,
            batch_size=training.batch_size,
            dataset=images,
            on_start=init_weights,
        )

    @staticmethod
    def _transfer_stage(config: QuantArtConfig) -> Stage:
        training = config.training.transfer
        transfer_loss, discriminator_loss = transfer_losses(config)
        return Stage(
            name="transfer",
            optimizers=[
                Optimizer("transfer", lambda model: [model.transfer], transfer_loss,
                          training.lr, algorithm="adam", betas=ADAM_BETAS, min_lr_ratio=0.1),
                Optimizer("latent_discriminator", lambda model: [model.latent_discriminator], discriminator_loss,
                          training.lr, algorithm="adam", betas=ADAM_BETAS, min_lr_ratio=0.1,
                          start_step=config.transfer.disc_start),
            ],
            steps=training.steps,
            batch_size=training.batch_size,
            dataset=code_pairs,
            sample_options={},  # the held-out content x style grid
        )

    def evaluate(self, model: QuantArt, config: QuantArtConfig, device: torch.device) -> dict[str, float]:
        """Style and content metrics of held-out pairs at balances (1, 1); see evaluation.py."""
        return evaluate_pairs(model, config, device)

    def export_components(self, model: QuantArt, config: QuantArtConfig) -> list[Component]:
        stride = 2 ** (len(config.vqgan.ch_mult) - 1)
        side, dim = config.image_size, config.vqgan.embed_dim
        generator = torch.Generator().manual_seed(config.seed)

        # Size s: batch 2 + s (1 would be specialised by the tracer) and sides shrinking by one
        # code per step; the reference is one code smaller than the content so the tracer
        # keeps the two spatial sizes independent.
        def images(size: int, shrink: int = 0) -> torch.Tensor:
            image_side = side - stride * (size + shrink)
            return torch.rand(2 + size, 3, image_side, image_side, generator=generator) * 2 - 1

        def codes(size: int, shrink: int = 0) -> torch.Tensor:
            code_side = side // stride - size - shrink
            return torch.randn(2 + size, dim, code_side, code_side, generator=generator)

        def balances(size: int) -> torch.Tensor:
            return torch.rand(2 + size, generator=generator)

        image_axes = {0: "batch", 2: "height", 3: "width"}
        code_axes = {0: "batch", 2: "code_height", 3: "code_width"}
        batch_axis = {0: "batch"}
        return [
            Component("photo_encoder", EncodeCodes(model.photo), lambda size: {"images": images(size)},
                      ["images"], ["codes"], {"images": image_axes, "codes": code_axes}),
            Component("art_encoder", EncodeCodes(model.art), lambda size: {"images": images(size)},
                      ["images"], ["codes"], {"images": image_axes, "codes": code_axes}),
            Component(
                "transfer", TransferCodes(model),
                lambda size: {"content_codes": codes(size), "reference_codes": codes(size, 1),
                              "content_style_balance": balances(size), "fidelity_balance": balances(size)},
                ["content_codes", "reference_codes", "content_style_balance", "fidelity_balance"], ["codes"],
                {"content_codes": code_axes, "reference_codes": {0: "batch", 2: "reference_height", 3: "reference_width"},
                 "content_style_balance": batch_axis, "fidelity_balance": batch_axis, "codes": code_axes},
            ),
            Component("art_decoder", DecodeCodes(model.art), lambda size: {"codes": codes(size)},
                      ["codes"], ["images"], {"codes": code_axes, "images": image_axes}),
            Component(
                "stylize", Stylize(model),
                lambda size: {"content": images(size), "style": images(size, 1),
                              "content_style_balance": balances(size), "fidelity_balance": balances(size)},
                ["content", "style", "content_style_balance", "fidelity_balance"], ["images"],
                {"content": image_axes, "style": {0: "batch", 2: "style_height", 3: "style_width"},
                 "content_style_balance": batch_axis, "fidelity_balance": batch_axis, "images": image_axes},
            ),
        ]

    def export_assets(self, model: QuantArt, config: QuantArtConfig) -> ExportAssets:
        """The held-out images `zoo sample` / `zoo run` stylise when no --content/--style is given."""
        count = config.data.sample_images
        return ExportAssets(arrays={
            "content_images": to_uint8(stack_images(content_images(config, "test", count), count).numpy()),
            "style_images": to_uint8(stack_images(style_images(config, "test", count), count).numpy()),
        })


@zoo.hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    return [QuantArtPlugin()]
