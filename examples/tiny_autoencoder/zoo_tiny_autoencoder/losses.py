"""The training loss: reconstruction MSE + the quantiser's commitment loss."""

import torch
import torch.nn.functional as F

import zoo

from .model import TinyAutoencoder


def reconstruction_loss(
    model: TinyAutoencoder, batch: zoo.plugin.Batch, ctx: zoo.StepContext
) -> dict[str, torch.Tensor]:
    reconstruction, quantized = model(batch["image"])
    mse = F.mse_loss(reconstruction, batch["image"])
    return {"loss": mse + quantized.loss, "mse": mse, "perplexity": quantized.perplexity}
