"""VQ-VAE-2 with gated PixelCNN priors: stages, evaluation and export components.

Stages: `vqvae` (the autoencoder), `prior_top` and `prior_bottom` (the priors, trained on
codes extracted once with the frozen autoencoder and cached in the run directory).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

import zoo
from zoo.data import DigitsClassifier, load_images
from zoo.errors import DataError
from zoo.nn.quantize import code_statistics, init_codebook_from
from zoo.plugin import Component, ModelPlugin, Optimizer, Stage, StageContext, StepContext, Validation
from zoo_vqvae2_pixelcnn.config import PRESETS, StageTraining, VQVAE2Config, VQVAE2SampleOptions
from zoo_vqvae2_pixelcnn.model import (
    BottomCondition, DecodeCodes, EncodeCodes, PriorLogits, PriorRow, PriorStep, TopCondition, VQVAE2PixelCNN,
)
from zoo_vqvae2_pixelcnn.vqvae import nearest_codes, reconstruction_loss

ENCODE_BATCH = 256  # images per forward pass when extracting codes


# data ---------------------------------------------------------------------------------------

def image_set(config: VQVAE2Config, split: str) -> Dataset:
    return load_images(config.data, config.image_size, split=split, seed=config.seed)


class CodeSet(Dataset):
    """Items {"top": (h_top, w_top), "bottom": (h, w) int64 codes, "label": int}."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"top": self.tensors["top"][index], "bottom": self.tensors["bottom"][index],
                "label": int(self.tensors["label"][index])}


def vqvae_fingerprint(model: VQVAE2PixelCNN) -> str:
    """Changes whenever the autoencoder's weights do, so a cache of codes never goes stale."""
    digest = hashlib.sha256()
    for tensor in model.vqvae.state_dict().values():
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def extract_codes(model: VQVAE2PixelCNN, config: VQVAE2Config, split: str, device: torch.device) -> dict[str, torch.Tensor]:
    images = image_set(config, split)
    first = images[0] if len(images) else {}
    if config.class_conditional and "label" not in first:
        raise DataError(f"data {config.data!r} has no labels; set class_conditional=false or use labelled data "
                        "(digits, or a folder with one subfolder per class)")
    was_training = model.vqvae.training
    model.vqvae.eval()
    tops, bottoms, labels = [], [], []
    for batch in DataLoader(images, batch_size=ENCODE_BATCH):
        top, bottom = model.vqvae.encode_codes(batch["image"].to(device))
        tops.append(top.cpu())
        bottoms.append(bottom.cpu())
        labels.append(batch["label"] if config.class_conditional else torch.zeros(len(top), dtype=torch.int64))
    model.vqvae.train(was_training)
    return {"top": torch.cat(tops), "bottom": torch.cat(bottoms), "label": torch.cat(labels).long()}


def cached_codes(context: StageContext, split: str) -> CodeSet:
    """The codes of a split, extracted once per autoencoder and kept in the run's cache."""
    model: VQVAE2PixelCNN = context.model
    path = Path(context.cache_dir) / f"codes_{split}_{vqvae_fingerprint(model)}.safetensors"
    if path.is_file():
        return CodeSet(load_file(path))
    tensors = extract_codes(model, context.config, split, context.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, temporary)
    temporary.replace(path)
    return CodeSet(tensors)


# losses -------------------------------------------------------------------------------------

def vqvae_loss(model: VQVAE2PixelCNN, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
    return reconstruction_loss(model.vqvae(batch["image"]), batch["image"])


def prior_top_loss(model: VQVAE2PixelCNN, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
    nll = F.cross_entropy(model.prior_top(batch["top"], batch["label"]), batch["top"])
    return {"loss": nll, "bits_per_code": nll / math.log(2)}


def prior_bottom_loss(model: VQVAE2PixelCNN, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
    nll = F.cross_entropy(model.prior_bottom(batch["bottom"], batch["top"], batch["label"]), batch["bottom"])
    return {"loss": nll, "bits_per_code": nll / math.log(2)}


@torch.no_grad()
def init_codebooks(model: VQVAE2PixelCNN, context: StageContext) -> None:
    """Start every code of both levels on a real encoder output (no code is born dead)."""
    images = next(iter(DataLoader(image_set(context.config, "train"), batch_size=ENCODE_BATCH)))["image"]
    vqvae = model.vqvae
    bottom_features, top_in = vqvae.features(images.to(context.device))
    init_codebook_from(vqvae.quantizer_top, _flatten(top_in))
    top_quantized = vqvae.quantizer_top.lookup(nearest_codes(top_in, vqvae.quantizer_top.codebook))
    init_codebook_from(vqvae.quantizer_bottom, _flatten(vqvae.bottom_input(bottom_features, top_quantized)))


def _flatten(features: torch.Tensor) -> torch.Tensor:
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


# the plugin ---------------------------------------------------------------------------------

class VQVAE2PixelCNNPlugin(ModelPlugin):
    name = "vqvae2_pixelcnn"
    description = "VQ-VAE-2 (two code levels) with gated PixelCNN priors; fast cached sampling"
    version = "0.1.0"
    Config = VQVAE2Config
    SampleOptions = VQVAE2SampleOptions
    presets = PRESETS
    default_preset = "digits32"
    runtime = "zoo_vqvae2_pixelcnn.runtime:VQVAE2Runtime"
    components = ("encoder", "decoder", *(f"{prior}_{part}" for prior in ("prior_top", "prior_bottom")
                                          for part in ("condition", "logits", "row", "step")))

    def build(self, config: VQVAE2Config) -> nn.Module:
        return VQVAE2PixelCNN(config)

    def stages(self, config: VQVAE2Config) -> list[Stage]:
        def images(split: str) -> Any:
            return lambda context: image_set(context.config, split)

        def codes(split: str) -> Any:
            return lambda context: cached_codes(context, split)

        def stage(part: str, loss: Any, data: Any, **options: Any) -> Stage:
            """A stage that trains model.<part> alone."""
            spec: StageTraining = getattr(config.training, part)
            optimizer = Optimizer(part, lambda model: [getattr(model, part)], loss, spec.lr,
                                  warmup_steps=spec.warmup_steps, min_lr_ratio=0.05)
            validation = Validation(data("test"), spec.validation_every, spec.patience) if spec.validation_every else None
            return Stage(part, [optimizer], spec.steps, spec.batch_size, data("train"), validation=validation, **options)

        return [
            stage("vqvae", vqvae_loss, images, on_start=init_codebooks),
            stage("prior_top", prior_top_loss, codes),
            stage("prior_bottom", prior_bottom_loss, codes, sample_options={"n": 64, "seed": 0}),
        ]

    @torch.no_grad()
    def evaluate(self, model: VQVAE2PixelCNN, config: VQVAE2Config, device: torch.device) -> dict[str, float]:
        """On the held-out split: reconstruction MSE/PSNR, codebook usage and perplexity per
        level, prior NLL in bits per code; on digits, how clear `eval_samples` samples are."""
        model.eval()
        metrics: dict[str, float] = {}
        squared_errors = []
        for batch in DataLoader(image_set(config, "test"), batch_size=ENCODE_BATCH):
            images = batch["image"].to(device)
            reconstruction = model.vqvae(images).reconstruction.clamp(-1, 1)
            squared_errors.append((reconstruction - images).pow(2).mean(dim=(1, 2, 3)).cpu())
        mse = torch.cat(squared_errors).mean().item()
        metrics["recon_mse"] = mse
        metrics["recon_psnr"] = 10 * math.log10(4.0 / mse)  # images span [-1, 1]: peak-to-peak 2

        codes = CodeSet(extract_codes(model, config, "test", device))
        for level, num_codes in (("top", config.vqvae.top_codes), ("bottom", config.vqvae.bottom_codes)):
            usage, perplexity = code_statistics(codes.tensors[level], num_codes)
            metrics[f"{level}_codebook_usage"] = usage
            metrics[f"{level}_perplexity"] = perplexity
        for name, loss in (("prior_top", prior_top_loss), ("prior_bottom", prior_bottom_loss)):
            nll, count = 0.0, 0
            for batch in DataLoader(codes, batch_size=ENCODE_BATCH):
                batch = {k: v.to(device) for k, v in batch.items()}
                nll += loss(model, batch, StepContext(0, 1, device))["loss"].item() * len(batch["label"])
                count += len(batch["label"])
            metrics[f"{name}_bits_per_code"] = nll / count / math.log(2)

        if config.data == "digits":
            output = self.sample(model, config, VQVAE2SampleOptions(n=config.eval_samples, seed=0), device)
            images = torch.from_numpy(output.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            labels = output.extras["labels"] if config.class_conditional else None
            metrics.update({f"sample_{k}": v for k, v in DigitsClassifier().score(images, labels).items()})
        return metrics

    def export_components(self, model: VQVAE2PixelCNN, config: VQVAE2Config) -> list[Component]:
        generator = torch.Generator().manual_seed(config.seed)
        top_side, bottom_side, size = config.top_side, config.bottom_side, config.image_size
        batch_axis = {0: "batch"}

        def codes(batch: int, side: int, num_codes: int) -> torch.Tensor:
            return torch.randint(0, num_codes, (batch, side, side), generator=generator)

        def image_inputs(variant: int) -> dict[str, torch.Tensor]:
            return {"images": torch.rand(2 + variant, 3, size, size, generator=generator) * 2 - 1}

        def code_inputs(variant: int) -> dict[str, torch.Tensor]:
            return {"top_codes": codes(2 + variant, top_side, config.vqvae.top_codes),
                    "bottom_codes": codes(2 + variant, bottom_side, config.vqvae.bottom_codes)}

        components = [
            Component("encoder", EncodeCodes(model.vqvae), image_inputs, ["images"], ["top_codes", "bottom_codes"],
                      {"images": batch_axis, "top_codes": batch_axis, "bottom_codes": batch_axis}),
            Component("decoder", DecodeCodes(model.vqvae), code_inputs, ["top_codes", "bottom_codes"], ["images"],
                      {"top_codes": batch_axis, "bottom_codes": batch_axis, "images": batch_axis}),
        ]
        for name, prior in model.priors().items():
            components += prior_components(name, prior, config, generator)
        return components


def prior_components(name: str, prior: nn.Module, config: VQVAE2Config, generator: torch.Generator) -> list[Component]:
    """`<name>_condition`, `_logits` (naive path), `_row` and `_step` (fast path)."""
    settings = getattr(config, name)
    side, num_codes, condition_channels = prior.side, prior.num_codes, settings.condition_channels
    batch_axis = {0: "batch"}

    def condition_inputs(variant: int) -> dict[str, torch.Tensor]:
        batch = 2 + variant
        labels = {"labels": torch.randint(0, config.num_classes if config.class_conditional else 1, (batch,),
                                          generator=generator)}
        if name == "prior_top":
            return labels
        return {"top_codes": torch.randint(0, config.vqvae.top_codes, (batch, config.top_side, config.top_side),
                                           generator=generator), **labels}

    def codes(batch: int) -> torch.Tensor:
        return torch.randint(0, num_codes, (batch, side, side), generator=generator)

    def condition_map(batch: int) -> torch.Tensor:
        return torch.randn(batch, condition_channels, side, side, generator=generator)

    def position(variant: int) -> torch.Tensor:
        return torch.randint(0, side, (1,), generator=generator)

    def logits_inputs(variant: int) -> dict[str, torch.Tensor]:
        return {"codes": codes(2 + variant), "condition": condition_map(2 + variant)}

    def row_inputs(variant: int) -> dict[str, torch.Tensor]:
        batch = 2 + variant
        return {"codes": codes(batch), "row": position(variant),
                "vertical_cache": torch.randn(batch, *settings.vertical_cache_shape(side), generator=generator),
                "previous_row": torch.randn(batch, *settings.horizontal_cache_shape(side), generator=generator),
                "condition": condition_map(batch)}

    def step_inputs(variant: int) -> dict[str, torch.Tensor]:
        batch = 2 + variant
        return {"codes": codes(batch), "row": position(variant), "col": position(variant),
                "row_bias": torch.randn(batch, *settings.row_bias_shape(side), generator=generator),
                "horizontal_cache": torch.randn(batch, *settings.horizontal_cache_shape(side), generator=generator)}

    if name == "prior_top":
        condition = Component(f"{name}_condition", TopCondition(prior), condition_inputs, ["labels"], ["condition"],
                              {"labels": batch_axis, "condition": batch_axis})
    else:
        condition = Component(f"{name}_condition", BottomCondition(prior), condition_inputs, ["top_codes", "labels"],
                              ["condition"], {"top_codes": batch_axis, "labels": batch_axis, "condition": batch_axis})
    return [
        condition,
        Component(f"{name}_logits", PriorLogits(prior), logits_inputs, ["codes", "condition"], ["logits"],
                  {"codes": batch_axis, "condition": batch_axis, "logits": batch_axis}),
        Component(f"{name}_row", PriorRow(prior), row_inputs,
                  ["codes", "row", "vertical_cache", "previous_row", "condition"], ["row_bias", "new_vertical_cache"],
                  {"codes": batch_axis, "vertical_cache": batch_axis, "previous_row": batch_axis, "condition": batch_axis,
                   "row_bias": batch_axis, "new_vertical_cache": batch_axis}),
        Component(f"{name}_step", PriorStep(prior), step_inputs,
                  ["codes", "row", "col", "row_bias", "horizontal_cache"], ["logits", "new_horizontal_cache"],
                  {"codes": batch_axis, "row_bias": batch_axis, "horizontal_cache": batch_axis,
                   "logits": batch_axis, "new_horizontal_cache": batch_axis}),
    ]


@zoo.hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    return [VQVAE2PixelCNNPlugin()]
