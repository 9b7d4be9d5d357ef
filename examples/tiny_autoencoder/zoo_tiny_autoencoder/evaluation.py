"""Reconstruction MSE and PSNR on the held-out digits."""

import torch
import torch.nn.functional as F

from zoo.data import digits
from zoo.nn.metrics import psnr_from_mse

from .config import TinyAutoencoderConfig
from .model import TinyAutoencoder


@torch.no_grad()
def evaluate(model: TinyAutoencoder, config: TinyAutoencoderConfig, device: torch.device) -> dict[str, float]:
    test = digits(config.image_size, "test")
    images = torch.stack([test[index]["image"] for index in range(len(test))]).to(device)
    reconstruction, _ = model(images)
    mse = F.mse_loss(reconstruction, images).item()
    return {"mse": mse, "psnr": psnr_from_mse(mse).item()}
