"""The stages' losses: reconstruction + commitment for the autoencoder, cross-entropy of
each level's codes for its prior (reported in bits per code too; a batch of images is
encoded first, codes.mode on_the_fly)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from zoo.plugin import StepContext
from zoo_vqvae2_pixelcnn.data import prior_batch
from zoo_vqvae2_pixelcnn.model import VQVAE2PixelCNN
from zoo_vqvae2_pixelcnn.vqvae import VQVAEOutput


def reconstruction_loss(output: VQVAEOutput, images: torch.Tensor) -> dict[str, torch.Tensor]:
    mse = F.mse_loss(output.reconstruction, images)
    return {
        "loss": mse + output.latent_loss,
        "mse": mse,
        "latent": output.latent_loss,
        "top_perplexity": output.top_perplexity,
        "bottom_perplexity": output.bottom_perplexity,
    }


def vqvae_loss(model: VQVAE2PixelCNN, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
    return reconstruction_loss(model.vqvae(batch["image"]), batch["image"])


def prior_top_loss(model: VQVAE2PixelCNN, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
    batch = prior_batch(model, batch)
    nll = F.cross_entropy(model.prior_top(batch["top"], batch["label"]), batch["top"])
    return {"loss": nll, "bits_per_code": nll / math.log(2)}


def prior_bottom_loss(model: VQVAE2PixelCNN, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
    batch = prior_batch(model, batch)
    nll = F.cross_entropy(model.prior_bottom(batch["bottom"], batch["top"], batch["label"]), batch["bottom"])
    return {"loss": nll, "bits_per_code": nll / math.log(2)}


PRIOR_LOSSES = {"prior_top": prior_top_loss, "prior_bottom": prior_bottom_loss}
