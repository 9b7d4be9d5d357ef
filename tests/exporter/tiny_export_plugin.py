"""A tiny plugin for the exporter tests: a conv autoencoder with a codebook and a
"decoder step" whose cache grows by one position per call. Its torch-free half (config,
options, loop) is in tiny_export_runtime.py."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from tests.exporter.tiny_export_runtime import TinyConfig, TinySampleOptions
from zoo.hookspecs import hookimpl
from zoo.plugin import Component, ExportAssets, ModelPlugin


class TinyAutoencoder(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        hidden, latent = config.channels, config.latent_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, hidden, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, latent, 3, stride=2, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Upsample(scale_factor=2.0),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Upsample(scale_factor=2.0),
            nn.Conv2d(hidden, 3, 3, padding=1),
            nn.Tanh(),
        )
        self.codebook = nn.Parameter(torch.randn(config.num_codes, latent))


class Encode(nn.Module):
    """images (B, 3, H, W) -> nearest code indices (B, H/4, W/4) int64."""

    def __init__(self, autoencoder: TinyAutoencoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        latent = self.autoencoder.encoder(images)  # (B, C, h, w)
        codebook = self.autoencoder.codebook  # (K, C)
        distances = (latent.unsqueeze(1) - codebook[None, :, :, None, None]).pow(2).sum(2)  # (B, K, h, w)
        return distances.argmin(dim=1)


class Decode(nn.Module):
    """indices (B, h, w) int64 -> images (B, 3, 4h, 4w) in [-1, 1]."""

    def __init__(self, autoencoder: TinyAutoencoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        latent = self.autoencoder.codebook[indices].permute(0, 3, 1, 2)  # (B, C, h, w)
        return self.autoencoder.decoder(latent)


class DecoderStep(nn.Module):
    """One step of a one-layer attention decoder with an explicit cache.

    tokens (B,) int64, cache (B, T, D) -> logits (B, K), new cache (B, T + 1, D).
    """

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.embed = nn.Embedding(config.num_codes + 1, dim)  # the last index is the start token
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.head = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, config.num_codes)
        )

    def forward(self, tokens: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(tokens)  # (B, D)
        new_cache = torch.cat([cache, x[:, None]], dim=1)  # (B, T + 1, D)
        scores = torch.einsum("bd,btd->bt", self.query(x), self.key(new_cache)) / x.shape[-1] ** 0.5
        attended = torch.einsum("bt,btd->bd", scores.softmax(dim=-1), self.value(new_cache))
        return self.head(x + attended), new_cache


class TinyModel(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.autoencoder = TinyAutoencoder(config)
        self.step = DecoderStep(config)


class TinyPlugin(ModelPlugin):
    name = "tiny"
    description = "exporter test model: conv autoencoder + decoder step with a cache"
    version = "0.0.1"
    Config = TinyConfig
    SampleOptions = TinySampleOptions
    runtime = "tests.exporter.tiny_export_runtime:TinyRuntime"

    def build(self, config: TinyConfig) -> nn.Module:
        torch.manual_seed(config.seed)
        return TinyModel(config)

    def export_components(self, model: TinyModel, config: TinyConfig) -> list[Component]:
        grid = config.image_size // 4
        generator = torch.Generator().manual_seed(config.seed)

        def images(size: int) -> dict[str, torch.Tensor]:
            return {
                "images": torch.rand(2 + size, 3, config.image_size, config.image_size, generator=generator) * 2 - 1
            }

        def indices(size: int) -> dict[str, torch.Tensor]:
            return {"indices": torch.randint(0, config.num_codes, (2 + size, grid, grid), generator=generator)}

        def step(size: int) -> dict[str, torch.Tensor]:
            batch, length = 2 + size, 3 + 2 * size
            return {
                "tokens": torch.randint(0, config.num_codes + 1, (batch,), generator=generator),
                "cache": torch.randn(batch, length, config.embed_dim, generator=generator),
            }

        return [
            Component(
                "encode",
                Encode(model.autoencoder),
                images,
                ["images"],
                ["indices"],
                {"images": {0: "batch"}, "indices": {0: "batch"}},
            ),
            Component(
                "decode",
                Decode(model.autoencoder),
                indices,
                ["indices"],
                ["images"],
                {"indices": {0: "batch"}, "images": {0: "batch"}},
            ),
            Component(
                "step",
                model.step,
                step,
                ["tokens", "cache"],
                ["logits", "new_cache"],
                {
                    "tokens": {0: "batch"},
                    "cache": {0: "batch", 1: "cache_length"},
                    "logits": {0: "batch"},
                    "new_cache": {0: "batch", 1: "new_cache_length"},
                },
            ),
        ]

    def export_assets(self, model: TinyModel, config: TinyConfig) -> ExportAssets:
        codebook = model.autoencoder.codebook.detach().cpu().numpy()
        return ExportAssets(arrays={"codebook": codebook}, files={"notes.txt": b"tiny export test\n"})


class TorchScriptTinyPlugin(TinyPlugin):
    """The tiny plugin traced by the TorchScript exporter, 20x faster than dynamo: for
    tests of the export directory's handling, not of tracing."""

    def export_components(self, model: TinyModel, config: TinyConfig) -> list[Component]:
        return [dataclasses.replace(c, exporter="torchscript") for c in super().export_components(model, config)]


@hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    """Used where a registry file names this module: the CLI fault tests (TorchScript, fast)."""
    return [TorchScriptTinyPlugin()]


def area_downsample_module() -> nn.Module:
    """16 -> 13 area downsampling (sizes that do not divide), as VAR's multi-scale
    quantizer needs."""

    class AreaDown(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return F.interpolate(x, size=(13, 13), mode="area"), F.adaptive_avg_pool2d(x, (5, 7))

    return AreaDown()
