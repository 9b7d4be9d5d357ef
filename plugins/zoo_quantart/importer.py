"""taming-transformers VQGAN checkpoints (CompVis/taming-transformers) -> a zoo `quantart` run.

The published files (`vqgan_imagenet_f16_1024.ckpt`, `vqgan_imagenet_f16_16384.ckpt`) are
Lightning checkpoints with the weights under `state_dict`. zoo's VQGAN is built on the same
taming blocks (zoo.nn.blocks), so most keys keep their names; one file fills both the photo
and the art VQGAN (QuantArt starts its art VQGAN from the photo one), the transfer module
and the latent discriminator keep their initialisation:

    taming                                     zoo (under `photo.` and `art.`)
    encoder.* / decoder.*                      the same names (separate q, k, v attention convs)
    quant_conv.* / post_quant_conv.*           the same names (1x1 convs)
    quantize.embedding.weight (K, D)           quantizer.codebook
    loss.discriminator.main.<i>.*              discriminator.main.<i>.* (the PatchGAN, BatchNorm
                                               running statistics included)
    loss.perceptual_loss.* (LPIPS), loss.logvar  skipped: zoo's perceptual term is its own

The official QuantArt checkpoints (siyuhuang/QuantArt `VQModel_Ref`, format "official") fill
the whole model; they hold no photo decoder, so the taming VQGAN file QuantArt was trained
from (its `checkpoint_encoder`) is given beside them:

    QuantArt                                   zoo
    encoder.* / quant_conv.* / quantize_enc.*  photo.encoder / photo.quant_conv / photo.quantizer
    encoder_real.* / quant_conv_real.*         art.encoder / art.quant_conv
    quantize_dec.* / decoder.* / post_quant_conv.*  art.quantizer / art.decoder / art.post_quant_conv
    model_x2y.blocks.<i>.*                     transfer.blocks.<i>.* (same block names)
    loss.discriminator.main.<i>.*              latent_discriminator.main.<i>.*
    taming file: decoder.*, post_quant_conv.*, loss.discriminator.*  photo.decoder, ..., photo.discriminator

The files do not store the image resolution the model was trained at; it only decides where
the attention blocks sit, so it is read off their position assuming taming's
attn_resolutions [16] (true of every published config).

A key that maps to nothing, a missing key, or a shape that does not fit the model built
from the inferred config is a one-line `CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint_files import (
    CheckpointError,
    PublishedFile,
    config_from_tensors,
    load_checkpoint,
    matching_rule,
    meta_shapes,
    tensors_in,
)
from zoo.importer import Converted, Importer, PublishedCheckpoint, RemoteFile
from zoo.importing import check_fit
from zoo_quantart.config import QuantArtConfig

ATTENTION_SIDE = 16  # taming's attn_resolutions in every published config
SKIPPED = re.compile(r"loss\.(perceptual_loss\..*|logvar)")  # LPIPS and latent-diffusion's log-variance

# a PatchGAN tensor as taming's loss holds it; \1 is its name under the discriminator
PATCHGAN_KEY = r"loss\.discriminator\.(main\.\d+\.(?:weight|bias|running_mean|running_var|num_batches_tracked))"

# (taming key pattern, zoo key under the VQGAN) in order; the first match wins.
VQGAN_RULES: list[tuple[str, str]] = [
    (r"quantize\.embedding\.weight", "quantizer.codebook"),
    (PATCHGAN_KEY, r"discriminator.\1"),
    # the rest keeps its name, except fused `qkv` attention convs (VAR's VQVAE; taming has q, k, v)
    (r"((?:encoder|decoder)\.(?!.*\.qkv\.)[\w.]+|(?:post_)?quant_conv\.(?:weight|bias))", r"\1"),
]
DOMAINS = ("photo", "art")

# The taming VQGANs on their authors' file share (Heidelberg University), the addresses the
# taming README links; rFIDs are its table's (ImageNet validation, 256 px). No sha256 is
# published. QuantArt's own checkpoints are on Google Drive only, which has no stable file
# address: import them with `zoo import quantart ... --format official`.
TAMING_LICENCE = "CC BY 3.0 (CompVis/taming-transformers)"
TAMING_SHARE = "https://heibox.uni-heidelberg.de/d/{}/files/?p=%2Fckpts%2Flast.ckpt&dl=1"
TAMING_CHECKPOINTS = (
    PublishedCheckpoint(
        "vqgan-imagenet-f16-1024",
        (RemoteFile("vqgan_imagenet_f16_1024.ckpt", url=TAMING_SHARE.format("8088892a516d4e3baf92")),),
        "taming VQGAN, ImageNet, f=16, 1,024 codes (QuantArt's photo VQGAN) into both VQGANs",
        TAMING_LICENCE,
        "rFID 8.0 on ImageNet validation, 256x256",
        preset="paper",
    ),
    PublishedCheckpoint(
        "vqgan-imagenet-f16-16384",
        (RemoteFile("vqgan_imagenet_f16_16384.ckpt", url=TAMING_SHARE.format("a7530b09fed84f80a887")),),
        "taming VQGAN, ImageNet, f=16, 16,384 codes, into both VQGANs",
        TAMING_LICENCE,
        "rFID 4.9 on ImageNet validation, 256x256",
    ),
)


class TamingVQGANImporter(Importer):
    model = "quantart"
    format = "taming"
    description = (
        "a taming-transformers VQGAN Lightning checkpoint (CompVis/taming-transformers: "
        "vqgan_imagenet_f16_1024.ckpt, vqgan_imagenet_f16_16384.ckpt, or one trained with its code) "
        "into both the photo and the art VQGAN, PatchGAN discriminator included"
    )
    checkpoints = TAMING_CHECKPOINTS

    def convert(self, files: list[Path]) -> Converted:
        if len(files) != 1:
            raise CheckpointError(
                f"quantart/taming imports one VQGAN .ckpt, got {len(files)} files: "
                f"{', '.join(str(path) for path in files)}"
            )
        path = Path(files[0])
        return self.convert_state_dict(path, tensors_in(load_checkpoint(path), "taming VQGAN", path))

    def convert_state_dict(self, path: Path, tensors: dict[str, torch.Tensor]) -> Converted:
        """`convert` on a state dict already read (`path` names it in errors); tensors may be
        on the meta device (shapes only)."""
        file = PublishedFile(Path(path), tensors, "a taming-transformers VQGAN or QuantArt checkpoint")
        mapped, skipped = self._map(file)  # first the names: another model fails on its first foreign key
        lpips = [key for key in skipped if key.startswith("loss.perceptual_loss.")]
        notes = [
            f"skipped {len(lpips)} LPIPS tensors (loss.perceptual_loss.*): zoo's perceptual term is its own "
            "(perceptual.weights)"
            if lpips
            else "the file holds no LPIPS tensors (loss.perceptual_loss.*)"
        ]
        if "loss.logvar" in skipped:
            notes.append("skipped loss.logvar: a training-loss scalar zoo's VQGAN loss does not have")
        config = _vqgan_config(file, "quantize.embedding.weight")
        discriminator = _discriminator_config(file)
        if discriminator:
            config["discriminator"] = discriminator
        has_discriminator = any(key.startswith("discriminator.") for key in mapped)
        if has_discriminator:
            notes.append(
                "the PatchGAN loss.discriminator.main.<i>.* (BatchNorm running statistics included) is "
                "photo.discriminator.main.<i>.* and art.discriminator.main.<i>.*"
            )
        else:
            notes.append("the file holds no loss.discriminator.*: both image discriminators keep their initialisation")
        notes.append(
            "one VQGAN fills both the photo and the art VQGAN; the transfer module and the latent "
            "discriminator keep their initialisation (train the transfer stage)"
        )
        notes.append(
            f"the image resolution is not stored in the file: taken as {config['image_size']} "
            f"from the attention blocks, assuming taming's attn_resolutions [{ATTENTION_SIDE}]"
        )
        notes.append("quantizer.usage (zoo's running code usage) is not in the file: it starts at its initial value")
        converted = {f"{domain}.{key}": tensor for domain in DOMAINS for key, (_, tensor) in mapped.items()}
        self._check_against_model(file, config, mapped, has_discriminator)
        return Converted(config=config, tensors=converted, stages=["vqgan_photo", "vqgan_art"], notes=notes)

    # --- keys ----------------------------------------------------------------------------

    @staticmethod
    def _map(file: PublishedFile) -> tuple[dict[str, tuple[str, torch.Tensor]], list[str]]:
        """zoo key (under one VQGAN) -> (taming key, tensor); and the skipped taming keys."""
        if "quantize.embedding.weight" not in file.tensors:
            hint = ""
            if any(key.startswith(("encoder_real.", "quantize_enc.", "model_x2y.")) for key in file.tensors):
                hint = " (it is a QuantArt VQModel_Ref checkpoint)"
            first = next(iter(file.tensors))
            raise file.fail(first, f"is not a taming VQGAN key and the file has no quantize.embedding.weight{hint}")
        mapped: dict[str, tuple[str, torch.Tensor]] = {}
        skipped = []
        for official, tensor in file.tensors.items():
            if SKIPPED.fullmatch(official):
                skipped.append(official)
                continue
            rule = matching_rule(VQGAN_RULES, official)
            if rule is None:
                raise file.fail(
                    official, "maps to nothing in zoo's VQGAN; the file belongs to another model or version"
                )
            mapped[re.sub(rule[0], rule[1], official)] = (official, tensor)
        return mapped, skipped

    @staticmethod
    def _check_against_model(
        file: PublishedFile,
        config: dict[str, Any],
        mapped: dict[str, tuple[str, torch.Tensor]],
        has_discriminator: bool,
    ) -> None:
        """Every converted tensor must fit zoo's VQGAN built from the inferred config (on the
        meta device: no memory); no key may be missing but the code usage zoo keeps and,
        where the file has none, the discriminator."""
        from zoo_quantart.model import VQGAN

        quantart_config = config_from_tensors(QuantArtConfig, config, file.path, "QuantArt")
        shapes = meta_shapes(lambda: VQGAN(quantart_config))
        tensors = {key: tensor for key, (_, tensor) in mapped.items()}
        for key in check_fit(tensors, shapes, "zoo's VQGAN", lambda key: (file.path, mapped[key][0])):
            if key == "quantizer.usage" or (key.startswith("discriminator.") and not has_discriminator):
                continue
            official = (
                "quantize.embedding.weight"
                if key.startswith("quantizer.")
                else key.replace("discriminator.", "loss.discriminator.", 1)
            )
            raise file.fail(official, f"is missing (zoo's {key}); is the file complete?")


# --- config from the tensors ---------------------------------------------------------------


def _vqgan_config(file: PublishedFile, codebook_key: str) -> dict[str, Any]:
    """image_size and the `vqgan` section, from taming's encoder/decoder names in `file`."""
    channels = file.get("encoder.conv_in.weight").shape[0]  # (ch, 3, 3, 3)
    levels = file.count(r"encoder\.down\.(\d+)\.")
    if levels == 0:
        raise file.fail("encoder.down.0.block.0.conv1.weight", "is missing; is this a taming VQGAN checkpoint?")
    multipliers = []
    for level in range(levels):
        key = f"encoder.down.{level}.block.0.conv1.weight"
        width = file.get(key).shape[0]
        if width % channels:
            raise file.fail(
                key,
                f"has shape {tuple(file.tensors[key].shape)}, not a multiple of encoder.conv_in's {channels} channels",
            )
        multipliers.append(width // channels)
    attention_levels = [level for level in range(levels) if f"encoder.down.{level}.attn.0.q.weight" in file.tensors]
    deepest = attention_levels[-1] if attention_levels else levels - 1
    resolution = ATTENTION_SIDE * 2**deepest
    codebook = file.get(codebook_key)  # (K, D)
    return {
        "image_size": resolution,
        "vqgan": {
            "ch": channels,
            "ch_mult": multipliers,
            "num_res_blocks": file.count(r"encoder\.down\.0\.block\.(\d+)\."),
            "attn_resolutions": [resolution // 2**level for level in attention_levels],
            "z_channels": file.get("decoder.conv_in.weight").shape[1],  # (C, z, 3, 3)
            "code_dim": codebook.shape[1],
            "codebook_size": codebook.shape[0],
        },
    }


def _discriminator_config(file: PublishedFile) -> dict[str, int]:
    """taming's NLayerDiscriminator(ndf, n_layers) under `loss.discriminator.`: one BatchNorm
    per layer (n_layers >= 1), or a single one at the first width for n_layers = 0."""
    first = file.tensors.get("loss.discriminator.main.0.weight")  # (ndf, C_in, 4, 4)
    if first is None:
        return {}
    norms = file.count(r"loss\.discriminator\.main\.(\d+)\.running_var")
    if norms == 1:
        second = file.get("loss.discriminator.main.2.weight")  # (ndf or 2 ndf, ndf, 4, 4)
        layers = 1 if second.shape[0] == 2 * first.shape[0] else 0
    else:
        layers = norms
    return {"base_channels": first.shape[0], "num_layers": layers}


# --- the official QuantArt checkpoint -------------------------------------------------------

# (QuantArt VQModel_Ref key pattern, zoo key) in order; the first match wins.
QUANTART_RULES: list[tuple[str, str]] = [
    (r"quantize_enc\.embedding\.weight", "photo.quantizer.codebook"),
    (r"quantize_dec\.embedding\.weight", "art.quantizer.codebook"),
    (r"encoder\.((?!.*\.qkv\.)[\w.]+)", r"photo.encoder.\1"),
    (r"quant_conv\.(weight|bias)", r"photo.quant_conv.\1"),
    (r"encoder_real\.((?!.*\.qkv\.)[\w.]+)", r"art.encoder.\1"),
    (r"quant_conv_real\.(weight|bias)", r"art.quant_conv.\1"),
    (r"decoder\.((?!.*\.qkv\.)[\w.]+)", r"art.decoder.\1"),
    (r"post_quant_conv\.(weight|bias)", r"art.post_quant_conv.\1"),
    (
        r"model_x2y\.blocks\.(\d+\.(?:res_block|self_attn_block|attn_block)\.\w+\.(?:weight|bias))",
        r"transfer.blocks.\1",
    ),
    (PATCHGAN_KEY, r"latent_discriminator.\1"),
]
# what the taming VQGAN beside it gives: the photo decoder and the photo image discriminator
PHOTO_DECODER_RULES: list[tuple[str, str]] = [
    (r"((?:decoder|post_quant_conv)\.[\w.]+)", r"photo.\1"),
    (PATCHGAN_KEY, r"photo.discriminator.\1"),
]
# ... whose photo encoder side QuantArt's training keeps frozen: it must equal QuantArt's copy
PHOTO_ENCODER_PAIRS: list[tuple[str, str]] = [
    (r"encoder\.([\w.]+)", r"encoder.\1"),
    (r"quant_conv\.(weight|bias)", r"quant_conv.\1"),
    (r"quantize\.embedding\.weight", "quantize_enc.embedding.weight"),
]


class OfficialQuantArtImporter(Importer):
    model = "quantart"
    format = "official"
    description = (
        "a QuantArt checkpoint (siyuhuang/QuantArt VQModel_Ref: photo encoder, art encoder and decoder, "
        "both codebooks, the transfer module, the latent discriminator) with the taming VQGAN .ckpt it was "
        "trained from (its checkpoint_encoder, e.g. vqgan_imagenet_f16_1024.ckpt) for the photo decoder, "
        "in either order"
    )

    def convert(self, files: list[Path]) -> Converted:
        return self.convert_state_dicts(
            {Path(path): tensors_in(load_checkpoint(path), "QuantArt or taming VQGAN", Path(path)) for path in files}
        )

    def convert_state_dicts(self, state_dicts: dict[Path, dict[str, torch.Tensor]]) -> Converted:
        """`convert` on state dicts already read; tensors may be on the meta device (shapes only)."""
        quantart, taming = self._identify(
            [
                PublishedFile(Path(path), tensors, "a taming-transformers VQGAN or QuantArt checkpoint")
                for path, tensors in state_dicts.items()
            ]
        )
        mapped: dict[str, tuple[PublishedFile, str, torch.Tensor]] = {}
        _map_into(quantart, QUANTART_RULES, mapped, "zoo's QuantArt", skip=SKIPPED)
        _map_into(taming, PHOTO_DECODER_RULES, mapped, "the photo decoder", skip=SKIPPED, keep=True)
        config = _vqgan_config(quantart, "quantize_enc.embedding.weight")
        art_codes = quantart.get("quantize_dec.embedding.weight").shape[0]
        if art_codes != config["vqgan"]["codebook_size"]:
            raise quantart.fail(
                "quantize_dec.embedding.weight",
                f"has {art_codes} codes, quantize_enc {config['vqgan']['codebook_size']}: zoo's photo and art "
                "codebooks have one size",
            )
        latent = _discriminator_config(quantart)
        config["transfer"] = {
            "block_num": quantart.count(r"model_x2y\.blocks\.(\d+)\."),
            "discriminator_downsample": True,
        }
        if latent:
            config["transfer"] |= {
                "discriminator_channels": latent["base_channels"],
                "discriminator_layers": latent["num_layers"],
            }
        image = _discriminator_config(taming)
        if image:
            config["discriminator"] = image
        notes = [
            f"{quantart.path.name} holds no photo decoder: photo.decoder and photo.post_quant_conv come "
            f"from {taming.path.name}"
            + (", as does the photo image discriminator (loss.discriminator.*)" if image else ""),
            "the art image discriminator is in neither file: it keeps its initialisation",
            "the latent discriminator's stride is not stored: the official stride-2 first conv is assumed",
            f"the image resolution is not stored in the files: taken as {config['image_size']} "
            f"from the attention blocks, assuming taming's attn_resolutions [{ATTENTION_SIDE}]",
            "quantizer.usage (zoo's running code usage) is not in the files: it starts at its initial value",
        ]
        notes += self._compare_photo_encoders(quantart, taming)
        missing_ok: tuple[str, ...] = ("quantizer.usage", "art.discriminator.")
        missing_ok += () if image else ("photo.discriminator.",)
        missing_ok += () if latent else ("latent_discriminator.",)
        _check_model(config, mapped, quantart, allow_missing=missing_ok)
        stages = ["vqgan_photo", "vqgan_art", "transfer"]
        return Converted(config, {key: tensor for key, (_, _, tensor) in mapped.items()}, stages, notes)

    @staticmethod
    def _identify(loaded: list[PublishedFile]) -> tuple[PublishedFile, PublishedFile]:
        quantart = [file for file in loaded if "quantize_enc.embedding.weight" in file.tensors]
        taming = [file for file in loaded if "quantize.embedding.weight" in file.tensors]
        for file in loaded:
            if file not in quantart and file not in taming:
                raise file.fail(next(iter(file.tensors)), "is neither a QuantArt nor a taming VQGAN key")
        if len(quantart) != 1 or len(taming) != 1:
            names = ", ".join(str(file.path) for file in loaded)
            raise CheckpointError(
                f"{names}: pass one QuantArt checkpoint and the taming VQGAN .ckpt it was trained from "
                f"(got {len(quantart)} QuantArt and {len(taming)} taming files)"
            )
        return quantart[0], taming[0]

    @staticmethod
    def _compare_photo_encoders(quantart: PublishedFile, taming: PublishedFile) -> list[str]:
        differ = []
        for pattern, target in PHOTO_ENCODER_PAIRS:
            for key, tensor in taming.tensors.items():
                if re.fullmatch(pattern, key):
                    theirs = quantart.tensors.get(re.sub(pattern, target, key))
                    if theirs is None or theirs.shape != tensor.shape:
                        raise taming.fail(
                            key,
                            f"does not fit {quantart.path.name}'s photo encoder; is it the VQGAN QuantArt was trained from?",
                        )
                    if tensor.device.type != "meta" and not torch.equal(theirs, tensor):
                        differ.append(key)
        if differ:
            return [
                f"{len(differ)} photo encoder tensors differ between the files (first {differ[0]}): QuantArt's are used"
            ]
        return []


def _map_into(
    file: PublishedFile,
    rules: list[tuple[str, str]],
    out: dict[str, tuple[PublishedFile, str, torch.Tensor]],
    what: str,
    skip: re.Pattern[str],
    keep: bool = False,
) -> None:
    """Rename `file`'s keys by `rules` into `out`; keys matching no rule fail, or are skipped
    when they match `skip` (`keep`: any key no rule takes is skipped, the file is a donor)."""
    for official, tensor in file.tensors.items():
        rule = matching_rule(rules, official)
        if rule is None:
            if skip.fullmatch(official) or keep:
                continue
            raise file.fail(official, f"maps to nothing in {what}; the file belongs to another model or version")
        out[re.sub(rule[0], rule[1], official)] = (file, official, tensor)


def _check_model(
    config: dict[str, Any],
    mapped: dict[str, tuple[PublishedFile, str, torch.Tensor]],
    main: PublishedFile,
    allow_missing: tuple[str, ...],
) -> None:
    """Every converted tensor must fit zoo's QuantArt built from the inferred config (on the
    meta device: no memory); only keys containing one of `allow_missing` may be missing."""
    from zoo_quantart.model import QuantArt

    quantart_config = config_from_tensors(QuantArtConfig, config, main.path, "QuantArt")
    shapes = meta_shapes(lambda: QuantArt(quantart_config))
    tensors = {key: tensor for key, (_, _, tensor) in mapped.items()}
    for key in check_fit(tensors, shapes, "zoo's QuantArt", lambda key: (mapped[key][0].path, mapped[key][1])):
        if not any(part in key for part in allow_missing):
            raise CheckpointError(f"{main.path}: no tensor for zoo's {key}; are the files complete?")
