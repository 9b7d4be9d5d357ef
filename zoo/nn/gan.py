"""GAN parts of VQGAN-style training (after CompVis/taming-transformers and QuantArt).

- `NLayerDiscriminator`: the pix2pix PatchGAN taming uses; with `downsample=False` every
  conv keeps the resolution, which is what QuantArt's latent discriminator over the code
  channels needs (a 16x16 code map leaves no room for stride-2 layers).
- `discriminator_loss` (hinge or vanilla) and `generator_adversarial_loss`.
- `adaptive_weight`: taming's balance of the adversarial term against the reconstruction
  term, the ratio of their gradient norms at the decoder's last layer.
- `adversarial_factor`: the discriminator factor, zero before `disc_start`. The trainer
  holds the discriminator back with `Optimizer(start_step=disc_start)`; the generator's
  loss multiplies its adversarial term by this factor so both switch on together.
- `VQGANLoss`: taming's VQLPIPSWithDiscriminator split into the trainer's two optimizer
  losses: the generator's (pixel + lazy perceptual + codebook + adaptively weighted
  adversarial term) and the discriminator's, on the fake the generator step cached.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GanLossKind = Literal["hinge", "vanilla"]


class NLayerDiscriminator(nn.Module):
    """PatchGAN: (B, in_channels, H, W) -> real/fake logits (B, 1, h, w), one per patch.

    conv4x4(stride 2) -> LeakyReLU, then `num_layers - 1` blocks of conv4x4(stride 2) ->
    BatchNorm -> LeakyReLU doubling the width (capped at 8x), one more such block at stride
    1, and a conv4x4 to one channel. `downsample=False` makes every stride 1.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_layers: int = 3,
        downsample: bool = True,
    ) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=stride, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for layer in range(1, num_layers + 1):
            next_width = base_channels * min(2**layer, 8)
            layer_stride = stride if layer < num_layers else 1
            layers += [
                # no conv bias: the BatchNorm that follows has its own
                nn.Conv2d(width, next_width, 4, stride=layer_stride, padding=1, bias=False),
                nn.BatchNorm2d(next_width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = next_width
        if num_layers == 0:  # taming's num_layers=0 still has the stride-1 block at 1x width
            layers += [
                nn.Conv2d(width, width, 4, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, h, w)
        return self.main(x)


def _init_weights(module: nn.Module) -> None:
    """pix2pix initialisation: conv weights N(0, 0.02), norm gains N(1, 0.02), biases 0."""
    if any(parameter.is_meta for parameter in module.parameters(recurse=False)):
        return  # shape-only (meta) modules have no values, and sampling them is slow
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def discriminator_loss(kind: GanLossKind, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return hinge_d_loss(logits_real, logits_fake)
    if kind == "vanilla":
        return vanilla_d_loss(logits_real, logits_fake)
    raise ValueError(f"unknown GAN loss {kind!r}; use 'hinge' or 'vanilla'")


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's term, -E[D(fake)], used with both discriminator losses (as taming)."""
    return -logits_fake.mean()


def adaptive_weight(
    reconstruction_loss: torch.Tensor,
    adversarial_loss: torch.Tensor,
    last_layer: torch.Tensor,
    scale: float = 1.0,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """scale * ||grad_last(reconstruction)|| / (||grad_last(adversarial)|| + 1e-4), clamped
    to [0, max_weight] and detached: the adversarial gradient arriving at the decoder's last
    layer is kept as large as the reconstruction gradient, whatever the loss scales."""
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach() * scale


def adversarial_factor(step: int, disc_start: int, factor: float = 1.0) -> float:
    """`factor` from `disc_start` on, 0 before (taming's `adopt_weight`)."""
    return factor if step >= disc_start else 0.0


@dataclass
class GeneratorTerms:
    loss: torch.Tensor  # what the generator's optimizer minimises
    pixel: torch.Tensor  # L1 or MSE of reconstruction and image
    perceptual: torch.Tensor | None  # None without a perceptual loss
    adversarial: torch.Tensor | None  # -E[D(fake)]; None while the discriminator is off
    weight: torch.Tensor | None  # adaptive weight x disc_weight of the adversarial term; None while off


class VQGANLoss:
    """The VQGAN objective (taming's VQLPIPSWithDiscriminator) in two halves:

        generator:      pixel + perceptual_weight * perceptual + codebook_weight * codebook
                        + factor * weight * -E[D(reconstruction)]
        discriminator:  factor * d_loss(D(images), D(cached reconstruction))

    with factor = `adversarial_factor(step, disc_start, disc_factor)` and weight =
    disc_weight * `adaptive_weight` at the decoder's last layer (disc_weight alone when
    `adaptive` is off or gradients are disabled, e.g. in validation). `perceptual` is a
    callable (images, targets) -> distance or None, e.g. a `zoo.nn.perceptual.LazyPerceptual`.
    The generator half keeps its reconstruction in `cache[cache_key]`, so the discriminator
    half, run next in the same step, judges that fake instead of decoding it again.
    """

    def __init__(
        self,
        *,
        pixel_loss: Literal["l1", "mse"] = "l1",
        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
        perceptual_weight: float = 1.0,
        codebook_weight: float = 1.0,
        disc_start: int = 0,
        disc_factor: float = 1.0,
        disc_weight: float = 1.0,
        disc_loss: GanLossKind = "hinge",
        adaptive: bool = True,
        cache_key: str = "reconstruction",
    ) -> None:
        if pixel_loss not in ("l1", "mse"):
            raise ValueError(f"unknown pixel loss {pixel_loss!r}; use 'l1' or 'mse'")
        self.pixel_loss, self.perceptual, self.perceptual_weight = pixel_loss, perceptual, perceptual_weight
        self.codebook_weight, self.disc_start, self.disc_factor = codebook_weight, disc_start, disc_factor
        self.disc_weight, self.disc_loss, self.adaptive, self.cache_key = disc_weight, disc_loss, adaptive, cache_key

    def generator(
        self,
        images: torch.Tensor,
        reconstruction: torch.Tensor,
        codebook_loss: torch.Tensor,
        discriminator: nn.Module | None,
        last_layer: torch.Tensor,
        step: int,
        cache: MutableMapping[str, torch.Tensor],
    ) -> GeneratorTerms:
        """The generator's loss of one step; `discriminator` None leaves the GAN term out."""
        pixel = (F.l1_loss if self.pixel_loss == "l1" else F.mse_loss)(reconstruction, images)
        reconstruction_loss = pixel
        perceptual = self.perceptual(reconstruction, images) if self.perceptual is not None else None
        if perceptual is not None:
            reconstruction_loss = reconstruction_loss + self.perceptual_weight * perceptual
        loss = reconstruction_loss + self.codebook_weight * codebook_loss
        adversarial = weight = None
        factor = adversarial_factor(step, self.disc_start, self.disc_factor)
        if discriminator is not None and factor > 0:  # before disc_start D is untrained: skip it
            adversarial = generator_adversarial_loss(discriminator(reconstruction))
            if self.adaptive and torch.is_grad_enabled():
                weight = adaptive_weight(reconstruction_loss, adversarial, last_layer, self.disc_weight)
            else:
                weight = adversarial.new_tensor(self.disc_weight)
            loss = loss + weight * factor * adversarial
        cache[self.cache_key] = reconstruction.detach()
        return GeneratorTerms(loss, pixel, perceptual, adversarial, weight)

    def discriminator(
        self,
        images: torch.Tensor,
        discriminator: nn.Module,
        step: int,
        cache: MutableMapping[str, torch.Tensor],
        make_fake: Callable[[], torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """The discriminator's loss of one step on real `images` and the generator step's
        cached fake (`make_fake()` without gradients when there is none, e.g. alone)."""
        fake = cache.get(self.cache_key)
        if fake is None:
            with torch.no_grad():
                fake = make_fake()
        logits_real = discriminator(images)
        logits_fake = discriminator(fake.detach())
        factor = adversarial_factor(step, self.disc_start, self.disc_factor)
        loss = factor * discriminator_loss(self.disc_loss, logits_real, logits_fake)
        return {"loss": loss, "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}
