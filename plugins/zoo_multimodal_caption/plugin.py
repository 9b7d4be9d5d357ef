"""The multimodal_caption plugin: its `joint` stage and the registry hook; the parts live in
config.py, model.py (image.py, text.py, text_tokenizer.py), losses.py, data.py,
evaluation.py and export.py."""

from __future__ import annotations

import torch
from torch import nn

import zoo
from zoo.plugin import (
    Batch,
    Component,
    ExportAssets,
    ModelPlugin,
    Optimizer,
    Stage,
    StageContext,
    StepContext,
    Validation,
)
from zoo_multimodal_caption import export
from zoo_multimodal_caption.config import PRESETS, CaptionConfig, CaptionSampleOptions, parameter_counts
from zoo_multimodal_caption.data import stage_tokenizer, tokenized, tokenizer_for
from zoo_multimodal_caption.evaluation import evaluate_captions
from zoo_multimodal_caption.image import TimmBackbone
from zoo_multimodal_caption.losses import caption_losses
from zoo_multimodal_caption.model import CaptionModel


def _description() -> str:
    millions = {
        name: sum(parameter_counts(CaptionConfig.model_validate(PRESETS[name])).values()) / 1e6 for name in PRESETS
    }
    engravings = CaptionConfig.model_validate(PRESETS["engravings"])
    stem_outputs = engravings.image.channels[-1] * (engravings.image.size // 2 ** len(engravings.image.channels)) ** 2
    stem = (engravings.latent_dim + 1) * stem_outputs  # weights and biases of Linear(latent -> 512*32*32)
    sizes = ", ".join(f"{name} {count:.1f}M" for name, count in millions.items())
    return (
        "Image autoencoder and captioner sharing one latent: image -> caption (greedy/beam/top-k/top-p, KV cache), "
        f"caption -> image, image/caption retrieval. Parameters: {sizes}. The reference calls `engravings` "
        f"~50M; its 512 px decoder stem Linear(1024 -> 512*32*32) alone is {stem / 1e6:.0f}M."
    )


class MultimodalCaptionPlugin(ModelPlugin[CaptionConfig, CaptionSampleOptions, CaptionModel]):
    name = "multimodal_caption"
    description = _description()
    Config = CaptionConfig
    SampleOptions = CaptionSampleOptions
    presets = PRESETS
    default_preset = "shapes"

    def build(self, config: CaptionConfig) -> CaptionModel:
        return CaptionModel(config)

    def stages(self, config: CaptionConfig) -> list[Stage[CaptionConfig, CaptionModel]]:
        training = config.training

        def loss(model: CaptionModel, batch: Batch, context: StepContext) -> dict[str, torch.Tensor]:
            return caption_losses(model, batch["image"], batch["tokens"], config.loss)

        def train_data(context: StageContext[CaptionConfig, CaptionModel]) -> torch.utils.data.Dataset:
            return tokenized(config, "train", stage_tokenizer(context))

        validation_sets: dict[str | None, torch.utils.data.Dataset] = {}  # by the model's tokenizer_json

        def validation_data(context: StageContext[CaptionConfig, CaptionModel]) -> torch.utils.data.Dataset:
            # built once per tokenizer: the trainer asks for it at every validation
            tokenizer = tokenizer_for(context.model, config)
            key = context.model.tokenizer_json
            if key not in validation_sets:
                validation_sets.clear()
                validation_sets[key] = tokenized(config, "test", tokenizer)
            return validation_sets[key]

        optimizer = Optimizer(
            name="joint",
            modules=lambda model: [model],
            loss=loss,
            lr=training.lr,
            algorithm="adam",
            weight_decay=training.weight_decay,
            clip_grad_norm=training.grad_clip,
            schedule=training.schedule,
            warmup_steps=training.warmup_steps,
        )
        return [
            Stage(
                name="joint",
                optimizers=[optimizer],
                steps=training.steps,
                batch_size=training.batch_size,
                dataset=train_data,
                validation=Validation(validation_data, training.validation_every, training.patience),
                sample_options={"n": 8},
            )
        ]

    def blocks(self, model: CaptionModel) -> list[nn.Module]:
        """The image encoder and decoder, each one unit (a plain conv -> ReLU chain: a checkpoint
        per conv would keep the very tensors it keeps without one, while one for the whole
        chain keeps only its input), and the text transformer layers. Left out: a timm image
        encoder (its BatchNorm, if any, keeps running statistics)."""
        image_encoder = [] if isinstance(model.image_encoder.backbone, TimmBackbone) else [model.image_encoder]
        return [*image_encoder, model.image_decoder, *model.text_encoder.blocks, *model.text_decoder.blocks]

    def evaluate(self, model: CaptionModel, config: CaptionConfig, device: torch.device) -> dict[str, float]:
        """Captioning, retrieval and reconstruction of held-out images; see evaluation.py."""
        return evaluate_captions(self.runtime_for(model, config, device), config)

    def export_components(self, model: CaptionModel, config: CaptionConfig) -> list[Component]:
        return export.export_components(model, config)

    def export_assets(self, model: CaptionModel, config: CaptionConfig) -> ExportAssets:
        return export.export_assets(model, config)


@zoo.hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    return [MultimodalCaptionPlugin()]
