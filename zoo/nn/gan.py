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
"""

from __future__ import annotations

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
