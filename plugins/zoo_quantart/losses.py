"""Loss functions of QuantArt's three stages, in the trainer's `loss(model, batch, ctx)` form.

VQGAN stages (taming's VQLPIPSWithDiscriminator): L1 reconstruction (+ perceptual) +
codebook/commitment + adversarial term scaled by the adaptive weight, on from `disc_start`.
Transfer stage (QuantArt's VQLPIPS_Ref), all on latent codes: content MSE, style mean/std
MSE, the art codebook's quantisation loss and a hinge term from the latent discriminator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from zoo.nn.gan import adaptive_weight, adversarial_factor, discriminator_loss, generator_adversarial_loss
from zoo.nn.perceptual import PerceptualLoss, timm_perceptual_loss
from zoo.plugin import Batch, StepContext
from zoo_quantart.config import QuantArtConfig
from zoo_quantart.model import VQGAN, QuantArt

Domain = Literal["photo", "art"]
Losses = dict[str, torch.Tensor]


class LazyPerceptual:
    """Builds the perceptual loss on first use, so listing stages never imports timm."""

    def __init__(self, config: QuantArtConfig) -> None:
        self.backbone, self.weights = config.perceptual.backbone, config.perceptual.weights
        self.loss: PerceptualLoss | None = None
        self.built = False

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        if not self.built:
            self.loss, self.built = timm_perceptual_loss(self.backbone, self.weights), True
        if self.loss is None:
            return None
        return self.loss.to(images.device)(images, targets)


def vqgan_losses(config: QuantArtConfig, domain: Domain) -> tuple[Callable, Callable]:
    """(generator loss, discriminator loss) of the VQGAN of `domain`."""
    disc = config.discriminator
    perceptual = LazyPerceptual(config)

    def vqgan(model: QuantArt) -> VQGAN:
        return model.photo if domain == "photo" else model.art

    def generator_loss(model: QuantArt, batch: Batch, ctx: StepContext) -> Losses:
        images = batch["image"]
        network = vqgan(model)
        reconstruction, quantized = network(images)
        l1 = (images - reconstruction).abs().mean()
        reconstruction_loss = l1
        losses: Losses = {"l1": l1.detach()}
        perceptual_distance = perceptual(reconstruction, images)
        if perceptual_distance is not None:
            reconstruction_loss = reconstruction_loss + config.perceptual.weight * perceptual_distance
            losses["perceptual"] = perceptual_distance.detach()

        factor = adversarial_factor(ctx.step, disc.disc_start, disc.factor)
        if factor > 0:
            adversarial = generator_adversarial_loss(network.discriminator(reconstruction))
            weight = adaptive_weight(reconstruction_loss, adversarial, network.last_layer, disc.weight)
        else:  # before disc_start the discriminator is untrained: skip its forward pass entirely
            adversarial = weight = reconstruction.new_zeros(())
        ctx.cache["reconstruction"] = reconstruction.detach()
        loss = reconstruction_loss + quantized.loss + weight * factor * adversarial
        return {
            "loss": loss, **losses, "codebook": quantized.loss.detach(), "adversarial": adversarial.detach(),
            "adaptive_weight": weight, "perplexity": quantized.perplexity.detach(),
        }

    def discriminator_step_loss(model: QuantArt, batch: Batch, ctx: StepContext) -> Losses:
        images = batch["image"]
        network = vqgan(model)
        reconstruction = ctx.cache.get("reconstruction")
        if reconstruction is None:
            with torch.no_grad():
                reconstruction = network(images)[0]
        logits_real = network.discriminator(images)
        logits_fake = network.discriminator(reconstruction)
        factor = adversarial_factor(ctx.step, disc.disc_start, disc.factor)
        loss = factor * discriminator_loss(disc.loss, logits_real, logits_fake)
        return {"loss": loss, "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}

    return generator_loss, discriminator_step_loss


def mean_std(features: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over positions: (B, C, H, W) -> (B, C), (B, C)."""
    flat = features.flatten(2)
    return flat.mean(2), (flat.var(2) + eps).sqrt()


def style_loss(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """MSE of channel means plus MSE of channel stds (AdaIN's style loss)."""
    mean, std = mean_std(features)
    reference_mean, reference_std = mean_std(reference)
    return F.mse_loss(mean, reference_mean) + F.mse_loss(std, reference_std)


def transfer_codes(model: QuantArt, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Content and reference codes (B, D, h, w) of a batch of precomputed code indices."""
    return model.photo.quantizer.lookup(batch["content_indices"]), model.art.quantizer.lookup(batch["reference_indices"])


def transfer_losses(config: QuantArtConfig) -> tuple[Callable, Callable]:
    """(transfer module loss, latent discriminator loss) of the transfer stage."""
    weights = config.transfer

    def generator_loss(model: QuantArt, batch: Batch, ctx: StepContext) -> Losses:
        content, reference = transfer_codes(model, batch)
        # The art codebook is frozen (eval mode): its loss here is the commitment term that
        # pulls the transferred codes toward art codes; gradients reach them straight through.
        quantized = model.art.quantizer(model.transfer(content, reference))
        output = quantized.quantized  # (B, D, h, w)
        content_term = F.mse_loss(output, content)
        style_term = style_loss(output, reference)
        feature_loss = weights.content_weight * content_term + weights.style_weight * style_term
        factor = adversarial_factor(ctx.step, weights.disc_start, weights.adversarial_factor)
        if factor > 0:
            adversarial = generator_adversarial_loss(model.latent_discriminator(output))
            weight = (adaptive_weight(feature_loss, adversarial, model.transfer.last_layer)
                      if weights.adaptive_weight else adversarial.new_ones(()))
        else:
            adversarial = weight = output.new_zeros(())
        ctx.cache["transferred"] = output.detach()
        loss = feature_loss + weights.codebook_weight * quantized.loss + weight * factor * adversarial
        return {
            "loss": loss, "content": content_term.detach(), "style": style_term.detach(),
            "codebook": quantized.loss.detach(), "adversarial": adversarial.detach(), "adaptive_weight": weight,
        }

    def discriminator_step_loss(model: QuantArt, batch: Batch, ctx: StepContext) -> Losses:
        content, reference = transfer_codes(model, batch)
        transferred = ctx.cache.get("transferred")
        if transferred is None:
            with torch.no_grad():
                transferred = model.art.quantizer(model.transfer(content, reference)).quantized
        logits_real = model.latent_discriminator(reference)
        logits_fake = model.latent_discriminator(transferred)
        factor = adversarial_factor(ctx.step, weights.disc_start, weights.adversarial_factor)
        loss = factor * discriminator_loss("hinge", logits_real, logits_fake)
        return {"loss": loss, "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}

    return generator_loss, discriminator_step_loss
