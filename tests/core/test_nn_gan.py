"""zoo.nn.gan, zoo.nn.perceptual and zoo.nn.backbone: the GAN parts, the VQGAN objective,
the perceptual loss and the one lazy timm import (moved here from the QuantArt tests)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from tests.tolerances import rounding_bound
from zoo.errors import ConfigError, ZooError
from zoo.nn.backbone import import_timm, load_backbone_weights
from zoo.nn.gan import (
    NLayerDiscriminator,
    VQGANLoss,
    adaptive_weight,
    adversarial_factor,
    discriminator_loss,
    generator_adversarial_loss,
)
from zoo.nn.perceptual import LazyPerceptual, PerceptualLoss, build_timm_backbone, timm_perceptual_loss

# --- zoo.nn.gan -----------------------------------------------------------------------------


def test_patchgan_shapes_with_and_without_downsampling():
    images = torch.randn(2, 3, 64, 64)
    assert NLayerDiscriminator(3, 8, num_layers=3)(images).shape == (2, 1, 6, 6)  # taming's 256 -> 30 pattern
    codes = torch.randn(2, 16, 16, 16)
    assert NLayerDiscriminator(16, 8, num_layers=0, downsample=False)(codes).shape == (
        2,
        1,
        13,
        13,
    )  # k4 p1: -1 per conv
    assert NLayerDiscriminator(16, 8, num_layers=0, downsample=True)(codes).shape == (2, 1, 6, 6)


def test_gan_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # hinge: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 * (0.25 + 0.5)
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx(0.375)
    softplus = torch.nn.functional.softplus
    expected = 0.5 * (softplus(-real).mean() + softplus(fake).mean())
    assert discriminator_loss("vanilla", real, fake).item() == pytest.approx(expected.item())
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        discriminator_loss("wasserstein", real, fake)


def test_adaptive_weight_balances_gradient_norms():
    torch.manual_seed(0)
    last = nn.Conv2d(4, 3, 3, padding=1)
    output = last(torch.randn(2, 4, 8, 8))
    reconstruction = output.abs().mean()
    adversarial = -output.mean()
    weight = adaptive_weight(reconstruction, adversarial, last.weight, scale=0.8)
    assert torch.isfinite(weight)
    assert weight.item() > 0
    assert not weight.requires_grad
    # scaling the adversarial loss by 10 scales the weight by (g + 1e-4) / (10 g + 1e-4), about 1/10,
    # g the norm of the adversarial gradient at the last layer; up to rounding (tests.tolerances)
    g = torch.autograd.grad(adversarial, last.weight, retain_graph=True)[0].norm().item()
    smaller = adaptive_weight(reconstruction, 10 * adversarial, last.weight, scale=0.8)
    expected = weight.item() * (g + 1e-4) / (10 * g + 1e-4)
    assert smaller.item() == pytest.approx(expected, rel=rounding_bound(1.0, depth=1))
    assert adversarial_factor(4, disc_start=5, factor=0.8) == 0.0
    assert adversarial_factor(5, disc_start=5, factor=0.8) == 0.8


# --- zoo.nn.perceptual ----------------------------------------------------------------------


class _TinyBackbone(nn.Module):
    """Stands in for a timm features_only model: returns a list of feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stage = nn.Conv2d(4, 8, 3, stride=2, padding=1)

    def forward(self, x):
        first = torch.relu(self.stem(x))
        return [first, torch.relu(self.stage(first))]


def test_perceptual_weights_load_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = _TinyBackbone()
    path = tmp_path / "backbone.safetensors"
    save_file({**source.state_dict(), "head.weight": torch.zeros(2, 2)}, str(path))  # extra keys are ignored
    target = _TinyBackbone()
    load_backbone_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)

    save_file({"stem.weight": source.stem.weight.detach()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ConfigError, match="lacks"):
        load_backbone_weights(_TinyBackbone(), tmp_path / "partial.safetensors")
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone_weights(_TinyBackbone(), tmp_path / "missing.safetensors")

    loss = PerceptualLoss(target)
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    assert loss(images, images.detach()).item() == 0.0  # the same features: no difference to round
    distance = loss(images, torch.rand(2, 3, 16, 16))
    distance.backward()
    assert distance.item() > 0
    assert images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in target.parameters())


def test_perceptual_is_off_without_weights_and_timm_failure_is_a_zoo_error(monkeypatch):
    assert timm_perceptual_loss("resnet18", None) is None
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ZooError, match="timm"):
        build_timm_backbone("resnet18")


def test_lazy_perceptual_is_off_without_weights_and_imports_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # building a backbone would fail
    perceptual = LazyPerceptual("resnet18", None)
    assert perceptual(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)) is None


def test_import_timm_failure_names_the_feature_and_the_way_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ZooError, match=r"^the thing needs timm, .*Error.*, or turn it off$"):
        import_timm("the thing", "turn it off")


# --- zoo.nn.gan.VQGANLoss -------------------------------------------------------------------


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.conv_out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, z):
        return self.conv_out(torch.relu(self.conv_in(z)))


def _gan_step(objective: VQGANLoss, step: int, with_discriminator: bool = True):
    torch.manual_seed(0)
    decoder, discriminator = _Decoder(), NLayerDiscriminator(3, 8, num_layers=1)
    images, latent = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 4, 16, 16)
    reconstruction = decoder(latent)
    codebook_loss = latent.new_tensor(0.5)
    cache: dict = {}
    terms = objective.generator(
        images,
        reconstruction,
        codebook_loss,
        discriminator if with_discriminator else None,
        decoder.conv_out.weight,
        step,
        cache,
    )
    return terms, decoder, discriminator, images, reconstruction, cache


def test_vqgan_generator_loss_is_taming_s_formula():
    objective = VQGANLoss(pixel_loss="l1", codebook_weight=2.0, disc_start=3, disc_factor=0.5, disc_weight=0.8)
    terms, decoder, discriminator, images, reconstruction, cache = _gan_step(objective, step=3)
    l1 = (reconstruction - images).abs().mean()
    adversarial = -discriminator(reconstruction).mean()
    expected_weight = adaptive_weight(l1, adversarial, decoder.conv_out.weight, scale=0.8)
    assert torch.allclose(terms.pixel, l1)
    assert torch.allclose(terms.weight, expected_weight)
    assert torch.allclose(terms.loss, l1 + 2.0 * 0.5 + expected_weight * 0.5 * adversarial)
    assert terms.perceptual is None
    assert torch.equal(cache["reconstruction"], reconstruction.detach())


def test_vqgan_gan_term_is_off_before_disc_start_and_without_a_discriminator():
    objective = VQGANLoss(pixel_loss="mse", codebook_weight=1.0, disc_start=3)
    for step, with_discriminator in ((2, True), (10, False)):
        terms, _, _, images, reconstruction, _ = _gan_step(objective, step, with_discriminator)
        mse = (reconstruction - images).pow(2).mean()
        assert terms.adversarial is None
        assert terms.weight is None
        assert torch.allclose(terms.loss, mse + 0.5)


def test_vqgan_perceptual_term_is_added_with_its_weight():
    objective = VQGANLoss(
        perceptual=lambda images, targets: (images - targets).abs().sum(), perceptual_weight=0.1, disc_start=100
    )
    terms, _, _, images, reconstruction, _ = _gan_step(objective, step=0)
    distance = (reconstruction - images).abs().sum()
    assert torch.allclose(terms.perceptual, distance)
    assert torch.allclose(terms.loss, terms.pixel + 0.1 * distance + 0.5)


def test_vqgan_discriminator_judges_the_cached_fake():
    objective = VQGANLoss(disc_start=0, disc_factor=0.5, disc_loss="hinge")
    _, _, discriminator, images, reconstruction, cache = _gan_step(objective, step=1)
    discriminator.eval()  # fixed BatchNorm statistics, so the two calls below see the same network
    fake = torch.rand_like(images)
    cache["reconstruction"] = fake
    out = objective.discriminator(images, discriminator, 1, cache, lambda: pytest.fail("the cached fake was not used"))
    expected = 0.5 * discriminator_loss("hinge", discriminator(images), discriminator(fake))
    assert torch.allclose(out["loss"], expected)
    # without a cached fake, it is made (without gradients)
    made = objective.discriminator(images, discriminator, 1, {}, lambda: fake * 0)
    assert torch.allclose(
        made["loss"], 0.5 * discriminator_loss("hinge", discriminator(images), discriminator(fake * 0))
    )
    assert not torch.allclose(made["loss"], out["loss"])
