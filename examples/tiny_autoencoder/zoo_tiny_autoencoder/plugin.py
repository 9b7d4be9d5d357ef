"""The plugin: model, one training stage, evaluation and export components."""

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.data import digits
from zoo.nn.quantize import VectorQuantizer

from .config import Config, SampleOptions


class TinyAutoencoder(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        w = config.width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, config.code_dim, 1)
        )
        self.quantizer = VectorQuantizer(config.codes, config.code_dim, ema_decay=0.9)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, w, 3, 1, 1), nn.ReLU(),
            nn.ConvTranspose2d(w, w, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(w, 3, 4, 2, 1), nn.Tanh(),
        )

    def forward(self, image: torch.Tensor):
        quantized = self.quantizer(self.encoder(image))  # codes: (B, H/4, W/4)
        return self.decoder(quantized.quantized), quantized


class Decode(nn.Module):
    """codes (B, h, w) int64 -> image (B, 3, H, W)."""

    def __init__(self, model: TinyAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(self.model.quantizer.lookup(codes))


class Encode(nn.Module):
    """image (B, 3, H, W) -> codes (B, h, w) int64."""

    def __init__(self, model: TinyAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.quantizer(self.model.encoder(image)).indices


def reconstruction_loss(model: TinyAutoencoder, batch: zoo.plugin.Batch, ctx: zoo.StepContext) -> dict:
    reconstruction, quantized = model(batch["image"])
    mse = F.mse_loss(reconstruction, batch["image"])
    return {"loss": mse + quantized.loss, "mse": mse, "perplexity": quantized.perplexity}


class TinyAutoencoderPlugin(zoo.ModelPlugin):
    name = "tiny_autoencoder"
    description = "Example plugin: a tiny vector-quantised conv autoencoder on the embedded digits"
    version = "0.1.0"
    Config = Config
    SampleOptions = SampleOptions
    presets = {"digits16": {}, "fast": {"steps": 50, "width": 16}}
    default_preset = "digits16"
    runtime = "zoo_tiny_autoencoder.runtime:TinyAutoencoderRuntime"
    components = ("encoder", "decoder")

    def build(self, config: Config) -> nn.Module:
        return TinyAutoencoder(config)

    def stages(self, config: Config) -> list[zoo.Stage]:
        optimizer = zoo.Optimizer("autoencoder", lambda m: [m], reconstruction_loss, lr=config.lr, warmup_steps=10)
        return [zoo.Stage("autoencoder", [optimizer], config.steps, config.batch_size,
                          dataset=lambda ctx: digits(config.image_size, "train", config.seed),
                          sample_options={"n": 16})]

    def evaluate(self, model: nn.Module, config: Config, device: torch.device) -> dict[str, float]:
        images = torch.stack([item["image"] for item in digits(config.image_size, "test")]).to(device)
        reconstruction, _ = model(images)
        mse = F.mse_loss(reconstruction, images).item()
        psnr = 10 * torch.log10(torch.tensor(4.0 / mse)).item()  # peak-to-peak range is 2
        return {"mse": mse, "psnr": psnr}

    def export_components(self, model: nn.Module, config: Config) -> list[zoo.Component]:
        side, size = config.image_size // 4, config.image_size
        return [
            zoo.Component("encoder", Encode(model), lambda i: {"image": torch.rand(1 + 2 * i, 3, size, size) * 2 - 1},
                          ["image"], ["codes"], {"image": {0: "batch"}, "codes": {0: "batch"}}),
            zoo.Component("decoder", Decode(model),
                          lambda i: {"codes": torch.randint(0, config.codes, (1 + 2 * i, side, side))},
                          ["codes"], ["image"], {"codes": {0: "batch"}, "image": {0: "batch"}}),
        ]


@zoo.hookimpl
def zoo_register_models() -> list[zoo.ModelPlugin]:
    return [TinyAutoencoderPlugin()]
