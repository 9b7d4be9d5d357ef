"""The plugin: what the core calls, wired to the modules that do it, and the registry hook."""

import torch

import zoo
from zoo.data import digits

from . import evaluation, export
from .config import PRESETS, TinyAutoencoderConfig, TinyAutoencoderSampleOptions
from .losses import reconstruction_loss
from .model import TinyAutoencoder


class TinyAutoencoderPlugin(zoo.ModelPlugin[TinyAutoencoderConfig, TinyAutoencoderSampleOptions, TinyAutoencoder]):
    name = "tiny_autoencoder"
    description = "Example plugin: a tiny vector-quantised conv autoencoder on the embedded digits"
    version = "0.1.0"
    Config = TinyAutoencoderConfig
    SampleOptions = TinyAutoencoderSampleOptions
    presets = PRESETS
    default_preset = "digits16"

    def build(self, config: TinyAutoencoderConfig) -> TinyAutoencoder:
        return TinyAutoencoder(config)

    def stages(self, config: TinyAutoencoderConfig) -> list[zoo.Stage[TinyAutoencoderConfig, TinyAutoencoder]]:
        optimizer = zoo.Optimizer("autoencoder", lambda m: [m], reconstruction_loss, lr=config.lr, warmup_steps=10)
        return [
            zoo.Stage(
                "autoencoder",
                [optimizer],
                config.steps,
                config.batch_size,
                dataset=lambda ctx: digits(config.image_size, "train", config.seed),
                sample_options={"n": 8},  # the stage's grid: held-out digits above their reconstructions
            )
        ]

    def evaluate(self, model: TinyAutoencoder, config: TinyAutoencoderConfig, device: torch.device) -> dict[str, float]:
        return evaluation.evaluate(model, config, device)

    def export_components(self, model: TinyAutoencoder, config: TinyAutoencoderConfig) -> list[zoo.Component]:
        return export.export_components(model, config)

    def export_assets(self, model: TinyAutoencoder, config: TinyAutoencoderConfig) -> zoo.ExportAssets:
        return export.export_assets(model, config)

    def blocks(self, model: TinyAutoencoder) -> list[torch.nn.Module]:
        # optional: the units --shard, --activation-checkpointing and --compile act on
        return [model.encoder, model.decoder]


@zoo.hookimpl
def zoo_register_models() -> list[zoo.ModelPlugin]:
    return [TinyAutoencoderPlugin()]
