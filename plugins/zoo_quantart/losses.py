"""Loss functions of QuantArt's three stages, in the trainer's `loss(model, batch, ctx)` form.

VQGAN stages (taming's VQLPIPSWithDiscriminator): L1 reconstruction (+ perceptual) +
codebook/commitment + adversarial term scaled by the adaptive weight, on from `disc_start`.
Transfer stage (QuantArt's VQLPIPS_Ref), all on latent codes: content MSE, style mean/std
MSE, the art codebook's quantisation loss and a hinge term from the latent discriminator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.nn.gan import VQGANLoss, adaptive_weight, adversarial_factor, generator_adversarial_loss
from zoo.nn.perceptual import LazyPerceptual
from zoo.plugin import Batch, LossFn, StepContext
from zoo_quantart.config import QuantArtConfig
from zoo_quantart.model import Domain, QuantArt

Losses = dict[str, torch.Tensor]


def vqgan_losses(config: QuantArtConfig, domain: Domain) -> tuple[LossFn[QuantArt], LossFn[QuantArt]]:
    """(generator loss, discriminator loss) of the VQGAN of `domain` (`zoo.nn.gan.VQGANLoss`)."""
    disc = config.discriminator
    objective = VQGANLoss(
        pixel_loss="l1",
        perceptual=LazyPerceptual(config.perceptual.backbone, config.perceptual.weights),
        perceptual_weight=config.perceptual.weight,
        disc_start=disc.disc_start,
        disc_factor=disc.factor,
        disc_weight=disc.weight,
        disc_loss=disc.loss,
    )

    def generator_loss(model: QuantArt, batch: Batch, ctx: StepContext) -> Losses:
        images = batch["image"]
        network = model.vqgan(domain)
        reconstruction, quantized = network(images)
        terms = objective.generator(
            images, reconstruction, quantized.loss, network.discriminator, network.last_layer, ctx.step, ctx.cache
        )
        zero = reconstruction.new_zeros(())
        perceptual = {} if terms.perceptual is None else {"perceptual": terms.perceptual.detach()}
        return {
            "loss": terms.loss,
            "l1": terms.pixel.detach(),
            **perceptual,
            "codebook": quantized.loss.detach(),
            "adversarial": zero if terms.adversarial is None else terms.adversarial.detach(),
            "adaptive_weight": zero if terms.weight is None else terms.weight,
            "perplexity": quantized.perplexity.detach(),
        }

    def discriminator_step_loss(model: QuantArt, batch: Batch, ctx: StepContext) -> Losses:
        images = batch["image"]
        network = model.vqgan(domain)
        return objective.discriminator(images, network.discriminator, ctx.step, ctx.cache, lambda: network(images)[0])

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
    return model.photo.quantizer.lookup(batch["content_indices"]), model.art.quantizer.lookup(
        batch["reference_indices"]
    )


def transfer_losses(config: QuantArtConfig) -> tuple[LossFn[QuantArt], LossFn[QuantArt]]:
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
            weight = (
                adaptive_weight(feature_loss, adversarial, model.transfer.last_layer)
                if weights.adaptive_weight
                else adversarial.new_ones(())
            )
        else:
            adversarial = weight = output.new_zeros(())
        ctx.cache["transferred"] = output.detach()
        loss = feature_loss + weights.codebook_weight * quantized.loss + weight * factor * adversarial
        return {
            "loss": loss,
            "content": content_term.detach(),
            "style": style_term.detach(),
            "codebook": quantized.loss.detach(),
            "adversarial": adversarial.detach(),
            "adaptive_weight": weight,
        }

    latent_gan = VQGANLoss(
        disc_start=weights.disc_start,
        disc_factor=weights.adversarial_factor,
        disc_loss="hinge",
        cache_key="transferred",
    )

    def discriminator_step_loss(model: QuantArt, batch: Batch, ctx: StepContext) -> Losses:
        content, reference = transfer_codes(model, batch)
        return latent_gan.discriminator(
            reference,
            model.latent_discriminator,
            ctx.step,
            ctx.cache,
            lambda: model.art.quantizer(model.transfer(content, reference)).quantized,
        )

    return generator_loss, discriminator_step_loss
