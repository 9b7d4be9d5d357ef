"""The `var` model plugin: stages, evaluation and export components of VAR."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import zoo
from zoo.data import DigitsClassifier, load_images
from zoo.nn import gan
from zoo.nn.perceptual import timm_perceptual_loss
from zoo.plugin import Component, ExportAssets, ModelPlugin, Optimizer, Stage, StageContext, StepContext, Validation
from zoo_var.config import PRESETS, Config, SampleOptions
from zoo_var.model import DecoderGraph, EmbedGraph, EncoderGraph, TransformerStepGraph, VARModel


class TokenDataset(Dataset):
    """Items {"tokens": (L,) int64, "label": int}: a data split encoded once by the frozen tokenizer."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"tokens": self.tokens[index], "label": int(self.labels[index])}


def _image_dataset(config: Config, split: str) -> Dataset:
    return load_images(config.data, config.tokenizer.resolution, split=split, seed=config.seed)


def _tokenizer_fingerprint(model: VARModel) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_split(model: VARModel, config: Config, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) int64 tokens and (N,) labels of a data split (label 0 for unlabelled data)."""
    loader = DataLoader(_image_dataset(config, split), batch_size=128, shuffle=False)
    was_training = model.tokenizer.training
    model.tokenizer.eval()
    tokens, labels = [], []
    for batch in loader:
        tokens.append(model.tokenizer.encode_indices(batch["image"].to(device)).cpu())
        labels.append(batch["label"] if "label" in batch else torch.zeros(len(batch["image"]), dtype=torch.int64))
    model.tokenizer.train(was_training)
    return torch.cat(tokens), torch.cat(labels).long()


def cached_token_dataset(context: StageContext, split: str) -> TokenDataset:
    """The split's tokens, encoded once and kept in the run's cache directory (safetensors),
    keyed by a fingerprint of the tokenizer weights so a retrained tokenizer re-encodes."""
    from safetensors.torch import load_file, safe_open, save_file

    model: VARModel = context.model
    fingerprint = _tokenizer_fingerprint(model)
    path = Path(context.cache_dir) / f"var-tokens-{split}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as file:
            stored = (file.metadata() or {}).get("tokenizer")
        if stored == fingerprint:
            tensors = load_file(str(path))
            return TokenDataset(tensors["tokens"], tensors["labels"])
    tokens, labels = encode_split(model, context.config, split, context.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")  # several processes (DDP) may write at once
    save_file({"tokens": tokens.contiguous(), "labels": labels.contiguous()}, str(temporary), {"tokenizer": fingerprint})
    temporary.replace(path)
    return TokenDataset(tokens, labels)


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (images.float() - targets.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(4.0 / mse)


class TokenizerLoss:
    """Reconstruction + quantiser loss, plus the optional perceptual and adversarial terms."""

    def __init__(self, config: Config) -> None:
        self.training = config.tokenizer_training
        self._perceptual: torch.nn.Module | None = None
        self._perceptual_ready = False

    def perceptual(self, device: torch.device) -> torch.nn.Module | None:
        if not self._perceptual_ready:
            training = self.training
            if training.perceptual_weight > 0:
                if training.perceptual_weights is None:
                    raise zoo.ZooError(
                        "tokenizer_training.perceptual_weight > 0 needs tokenizer_training.perceptual_weights, "
                        "a local safetensors file of the backbone (nothing is downloaded)"
                    )
                self._perceptual = timm_perceptual_loss(training.perceptual_backbone, training.perceptual_weights)
                self._perceptual.to(device)
            self._perceptual_ready = True
        return self._perceptual

    def __call__(self, model: VARModel, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
        images, training = batch["image"], self.training
        out = model.tokenizer(images)
        reconstruction = out.reconstruction
        pixel = (F.l1_loss if training.reconstruction_loss == "l1" else F.mse_loss)(reconstruction, images)
        rec_loss = pixel
        values: dict[str, torch.Tensor] = {}
        perceptual = self.perceptual(images.device)
        if perceptual is not None:
            values["perceptual"] = perceptual(reconstruction, images)
            rec_loss = rec_loss + training.perceptual_weight * values["perceptual"]
        loss = rec_loss + training.vq_weight * out.vq_loss
        factor = gan.adversarial_factor(context.step, training.gan_start, training.gan_weight)
        if model.discriminator is not None and factor > 0:
            adversarial = gan.generator_adversarial_loss(model.discriminator(reconstruction))
            last_layer = model.tokenizer.decoder.conv_out.weight
            weight = gan.adaptive_weight(rec_loss, adversarial, last_layer) if torch.is_grad_enabled() else 1.0
            loss = loss + factor * weight * adversarial
            values["adversarial"] = adversarial
        context.cache["reconstruction"] = reconstruction.detach()
        usage = torch.tensor(model.quantizer.usage_fraction(), device=images.device)
        return {"loss": loss, "reconstruction": pixel, "vq": out.vq_loss, "psnr": psnr(reconstruction, images).mean(),
                "codebook_usage": usage, **values}


def discriminator_loss(model: VARModel, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
    images = batch["image"]
    fake = context.cache.get("reconstruction")
    if fake is None:
        with torch.no_grad():
            fake = model.tokenizer(images).reconstruction
    loss = gan.discriminator_loss("hinge", model.discriminator(images), model.discriminator(fake.detach()))
    return {"loss": loss}


class TransformerLoss:
    """Teacher-forced next-scale cross-entropy; the class is dropped to the unconditional one
    with probability condition_dropout while training (for classifier-free guidance)."""

    def __init__(self, label_smoothing: float) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, model: VARModel, batch: dict[str, Any], context: StepContext) -> dict[str, torch.Tensor]:
        tokens, labels = batch["tokens"], batch["label"]
        transformer, quantizer = model.transformer, model.quantizer
        with torch.no_grad():
            teacher_input = quantizer.teacher_forcing_input(quantizer.split_scales(tokens))
        if transformer.training and transformer.condition_dropout > 0:
            dropped = torch.rand(labels.shape, device=labels.device) < transformer.condition_dropout
            labels = torch.where(dropped, torch.full_like(labels, transformer.null_class), labels)
        logits = transformer(labels, teacher_input)  # (B, L, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(-1) == tokens).float().mean()
        return {"loss": loss, "token_accuracy": accuracy}


class VARPlugin(ModelPlugin):
    name = "var"
    description = "VAR: class-conditional image generation by next-scale prediction (multi-scale VQVAE + transformer)"
    version = "0.1.0"
    Config = Config
    SampleOptions = SampleOptions
    presets = PRESETS
    default_preset = "digits"
    runtime = "zoo_var.runtime:VARRuntime"
    # embed_k is one graph per scale: embed_0 .. embed_{K-1} for K = len(tokenizer.patch_nums)
    components = ("encoder", "transformer_step", "embed_k", "decoder")

    def build(self, config: Config) -> VARModel:
        return VARModel(config)

    def stages(self, config: Config) -> list[Stage]:
        tokenizer_training, transformer_training = config.tokenizer_training, config.transformer_training
        tokenizer_optimizers = [
            Optimizer(
                name="tokenizer",
                modules=lambda model: [model.tokenizer],
                loss=TokenizerLoss(config),
                lr=tokenizer_training.lr,
                algorithm="adam",
                betas=(0.5, 0.9) if tokenizer_training.gan_weight > 0 else (0.9, 0.99),
                warmup_steps=tokenizer_training.warmup_steps,
                min_lr_ratio=0.1,
            )
        ]
        if tokenizer_training.gan_weight > 0:
            tokenizer_optimizers.append(
                Optimizer(
                    name="discriminator",
                    modules=lambda model: [model.discriminator],
                    loss=discriminator_loss,
                    lr=tokenizer_training.gan_lr,
                    algorithm="adam",
                    betas=(0.5, 0.9),
                    schedule="constant",
                    start_step=tokenizer_training.gan_start,
                )
            )
        tokenizer = Stage(
            name="tokenizer",
            optimizers=tokenizer_optimizers,
            steps=tokenizer_training.steps,
            batch_size=tokenizer_training.batch_size,
            dataset=lambda context: _image_dataset(context.config, "train"),
        )
        transformer = Stage(
            name="transformer",
            optimizers=[
                Optimizer(
                    name="transformer",
                    modules=lambda model: [model.transformer],
                    loss=TransformerLoss(transformer_training.label_smoothing),
                    # the paper's rule: lr = base lr * batch / 256
                    lr=transformer_training.lr_per_256 * transformer_training.batch_size / 256,
                    algorithm="adamw",
                    betas=tuple(transformer_training.betas),
                    weight_decay=transformer_training.weight_decay,
                    # as the official code: no decay on position/level embeddings and AdaLN gains
                    no_weight_decay=("pos_start", "position_embedding", "level_embedding", "ada_gss", "log_scale"),
                    warmup_steps=transformer_training.warmup_steps,
                    min_lr_ratio=0.01,
                    clip_grad_norm=transformer_training.clip_grad_norm,
                )
            ],
            steps=transformer_training.steps,
            batch_size=transformer_training.batch_size,
            dataset=lambda context: cached_token_dataset(context, "train"),
            validation=Validation(
                dataset=lambda context: cached_token_dataset(context, "test"),
                every=transformer_training.validate_every,
            ),
            sample_options={"n": 4},
        )
        return [tokenizer, transformer]

    @torch.no_grad()
    def evaluate(self, model: VARModel, config: Config, device: torch.device) -> dict[str, float]:
        """Tokenizer PSNR and codebook usage and transformer token accuracy / NLL on the
        held-out split; for the digits, the classifier accuracy of samples per class."""
        model.eval()
        metrics: dict[str, float] = {}
        loader = DataLoader(_image_dataset(config, "test"), batch_size=128, shuffle=False)
        psnrs, all_tokens, all_labels = [], [], []
        for batch in loader:
            images = batch["image"].to(device)
            tokens = model.tokenizer.encode_indices(images)
            f_hat = model.quantizer.fhat_from_indices(model.quantizer.split_scales(tokens))
            psnrs.append(psnr(model.tokenizer.decode(f_hat).clamp(-1, 1), images).cpu())
            all_tokens.append(tokens)
            labels = batch["label"] if "label" in batch else torch.zeros(len(images), dtype=torch.int64)
            all_labels.append(labels.to(device))
        tokens, labels = torch.cat(all_tokens), torch.cat(all_labels)
        metrics["tokenizer_psnr"] = float(torch.cat(psnrs).mean())
        vocab = config.tokenizer.vocab_size
        metrics["codebook_usage"] = float(torch.bincount(tokens.flatten().cpu(), minlength=vocab).gt(0).float().mean())

        nll, correct, count = 0.0, 0.0, 0
        for start in range(0, len(tokens), 128):
            chunk, chunk_labels = tokens[start : start + 128], labels[start : start + 128]
            teacher_input = model.quantizer.teacher_forcing_input(model.quantizer.split_scales(chunk))
            logits = model.transformer(chunk_labels, teacher_input)
            nll += float(F.cross_entropy(logits.flatten(0, 1), chunk.flatten(), reduction="sum"))
            correct += float((logits.argmax(-1) == chunk).sum())
            count += chunk.numel()
        metrics["token_nll"] = nll / count
        metrics["token_accuracy"] = correct / count

        if config.data == "digits":
            options = SampleOptions()
            output = self.sample(model, config, options, device)
            images = output.images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
            predicted = DigitsClassifier().predict(images)
            wanted = output.extras["labels"]
            metrics["sample_accuracy"] = float((predicted == wanted).mean())
            for digit in np.unique(wanted):
                metrics[f"sample_accuracy_{digit}"] = float((predicted[wanted == digit] == digit).mean())
        return metrics

    def export_components(self, model: VARModel, config: Config) -> list[Component]:
        tokenizer, transformer = config.tokenizer, config.transformer
        side, channels, patch_nums = tokenizer.patch_nums[-1], tokenizer.latent_channels, tokenizer.patch_nums
        starts = model.quantizer.scale_starts
        depth, heads = transformer.depth, transformer.resolved_heads
        head_dim = transformer.resolved_width // heads
        batch_of = (2, 3, 1)  # size 0 is traced: no batch of 1 there (torch.export specialises 0/1)

        def images(size: int) -> dict[str, torch.Tensor]:
            return {"image": torch.rand(batch_of[size], 3, tokenizer.resolution, tokenizer.resolution) * 2 - 1}

        def f_hat(size: int) -> dict[str, torch.Tensor]:
            return {"f_hat": torch.randn(batch_of[size], channels, side, side)}

        def embed_inputs(scale: int):
            def make(size: int) -> dict[str, torch.Tensor]:
                codes = torch.randn(batch_of[size], patch_nums[scale] ** 2, channels)
                return {"codes": codes, **f_hat(size)}
            return make

        def step_inputs(size: int) -> dict[str, torch.Tensor]:
            # traced: scale 1 after a 3-long cache; then the last scale, and scale 0 from an empty cache
            scale, past = [(1, 3), (len(patch_nums) - 1, starts[-2]), (0, 0)][size]
            batch = 2 * batch_of[size]  # doubled for guidance
            tokens = patch_nums[scale] ** 2
            return {
                "labels": torch.randint(0, transformer.num_classes + 1, (batch,)),
                "scale_inputs": torch.randn(batch, tokens, channels),
                "positions": torch.arange(starts[scale], starts[scale] + tokens),
                "cache": torch.randn(depth, 2, batch, heads, past, head_dim),
            }

        batch_axis = {0: "batch"}
        components = [
            Component("encoder", EncoderGraph(model.tokenizer), images, ["image"], ["tokens"],
                      {"image": batch_axis, "tokens": batch_axis}),
            Component("decoder", DecoderGraph(model.tokenizer), f_hat, ["f_hat"], ["image"],
                      {"f_hat": batch_axis, "image": batch_axis}),
        ]
        for scale in range(len(patch_nums)):
            last = scale == len(patch_nums) - 1
            outputs = ["new_f_hat"] if last else ["new_f_hat", "next_input"]
            components.append(Component(
                f"embed_{scale}", EmbedGraph(model.quantizer, scale), embed_inputs(scale), ["codes", "f_hat"], outputs,
                {name: batch_axis for name in ["codes", "f_hat", *outputs]},
            ))
        components.append(Component(
            "transformer_step", TransformerStepGraph(model.transformer), step_inputs,
            ["labels", "scale_inputs", "positions", "cache"], ["logits", "new_cache"],
            {
                "labels": batch_axis,
                "scale_inputs": {0: "batch", 1: "tokens"},
                "positions": {0: "tokens"},
                "cache": {2: "batch", 4: "past"},
                "logits": {0: "batch", 1: "tokens"},
                "new_cache": {2: "batch", 4: "total"},
            },
        ))
        return components

    def export_assets(self, model: VARModel, config: Config) -> ExportAssets:
        return ExportAssets(arrays={"codebook": model.quantizer.codebook.detach().float().cpu().numpy()})


def transformer_parameter_count(model: VARModel) -> int:
    """What the paper reports as the model size: the VAR transformer alone (no tokenizer)."""
    return sum(math.prod(p.shape) for p in model.transformer.parameters())


@zoo.hookimpl
def zoo_register_models() -> list[ModelPlugin]:
    return [VARPlugin()]
