"""The losses of VAR's two stages: `tokenizer` (reconstruction + quantiser, optional
perceptual and adversarial terms) and `transformer` (teacher-forced next-scale cross-entropy)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from zoo.errors import ZooError
from zoo.nn.gan import VQGANLoss
from zoo.nn.metrics import psnr
from zoo.nn.perceptual import LazyPerceptual
from zoo.plugin import StepContext
from zoo_var.config import VARConfig
from zoo_var.model import VARModel


class TokenizerLoss:
    """Reconstruction + quantiser loss, plus the optional perceptual and adversarial terms
    (`zoo.nn.gan.VQGANLoss`; gan_weight scales the adaptive weight as taming's disc_weight).
    The instance is the tokenizer optimizer's loss, `discriminator` the discriminator's."""

    def __init__(self, config: VARConfig) -> None:
        training = config.tokenizer_training
        self.perceptual_without_weights = training.perceptual_weight > 0 and training.perceptual_weights is None
        self.vqgan = VQGANLoss(
            pixel_loss=training.reconstruction_loss,
            perceptual=(
                LazyPerceptual(training.perceptual_backbone, training.perceptual_weights)
                if training.perceptual_weight > 0
                else None
            ),
            perceptual_weight=training.perceptual_weight,
            codebook_weight=training.vq_weight,
            disc_start=training.gan_start,
            disc_weight=training.gan_weight,
            disc_loss="hinge",
        )

    def __call__(self, model: VARModel, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
        if self.perceptual_without_weights:
            raise ZooError(
                "tokenizer_training.perceptual_weight > 0 needs tokenizer_training.perceptual_weights, "
                "a local safetensors file of the backbone (nothing is downloaded)"
            )
        images = batch["image"]
        out = model.tokenizer(images)
        terms = self.vqgan.generator(
            images,
            out.reconstruction,
            out.vq_loss,
            model.discriminator,
            model.tokenizer.decoder.conv_out.weight,
            context.step,
            context.cache,
        )
        values = {"perceptual": terms.perceptual, "adversarial": terms.adversarial}
        usage = torch.tensor(model.quantizer.usage_fraction(), device=images.device)
        return {
            "loss": terms.loss,
            "reconstruction": terms.pixel,
            "vq": out.vq_loss,
            "psnr": psnr(out.reconstruction, images).mean(),
            "codebook_usage": usage,
            **{name: value for name, value in values.items() if value is not None},
        }

    def discriminator(self, model: VARModel, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
        images = batch["image"]
        return self.vqgan.discriminator(
            images, model.gan_discriminator, context.step, context.cache, lambda: model.tokenizer(images).reconstruction
        )


class TransformerLoss:
    """Teacher-forced next-scale cross-entropy; the class is dropped to the unconditional one
    with probability condition_dropout while training (for classifier-free guidance)."""

    def __init__(self, label_smoothing: float) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, model: VARModel, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
        tokens, labels = batch["tokens"], batch["label"]  # (B, L), (B,)
        transformer, quantizer = model.transformer, model.quantizer
        with torch.no_grad():
            teacher_input = quantizer.teacher_forcing_input(quantizer.split_scales(tokens))
        if transformer.training and transformer.condition_dropout > 0:
            dropped = torch.rand(labels.shape, device=labels.device) < transformer.condition_dropout
            labels = torch.where(dropped, torch.full_like(labels, transformer.null_class), labels)
        logits = transformer(labels, teacher_input)  # (B, L, codebook_size)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(-1) == tokens).float().mean()
        return {"loss": loss, "token_accuracy": accuracy}
