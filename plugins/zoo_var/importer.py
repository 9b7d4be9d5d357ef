"""The official VAR checkpoints (FoundationVision/VAR) -> a zoo `var` run directory.

The published files are plain state dicts: the multi-scale VQVAE `vae_ch160v4096z32.pth`
and one transformer `var_d{16,20,24,30,36}.pth`. The importer tells them apart by their
keys, reads the config off the tensors, and renames every official key to zoo's:

    VQVAE                                        zoo (under `tokenizer.`)
    encoder.* / decoder.*                        the same names; each fused attention
      ...attn.N.qkv (3C, C, 1, 1)                  conv is split into q, k, v (C, C, 1, 1)
    quantize.embedding.weight (V, Cvae)          quantizer.codebook
    quantize.quant_resi.qresi_ls.K.*  (qsr>=2)   quantizer.phis.K.*   (phi_count K)
    quantize.quant_resi.qresi.*       (qsr=1)    quantizer.phis.0.*   (phi_count 1)
    quantize.quant_resi.K.*           (qsr=0)    quantizer.phis.K.*   (phi_count 0: one per scale)
    quantize.ema_vocab_hit_SV (S, V)             quantizer.usage (V,): summed over scales

    transformer                                  zoo (under `transformer.`)
    pos_start (1, n, C) / pos_1LC (1, L, C)      pos_start (n, C) / position_embedding (L, C)
    class_emb / lvl_embed                        class_embedding / level_embedding
    blocks.i.attn.mat_qkv / scale_mul_1H11       blocks.i.attention.qkv / log_scale
    head_nm.*                                    head_norm.*
    lvl_1L, attn_bias_for_masking, zero_k_bias   dropped: zoo derives them

A key that maps to nothing, a missing key, or a shape that does not fit the model built
from the inferred config is a one-line `CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
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
from zoo_var.config import PAPER_PATCH_NUMS, VARConfig

VAE_FILE = "vae_ch160v4096z32.pth"
DROP = None  # a rule's target: the key is a buffer zoo rebuilds

# The release on the Hugging Face Hub; FIDs are the official README's (ImageNet, 50k samples,
# cfg 1.5, top-k 900, top-p 0.96). No sha256 is published: `zoo pull` records what it got.
HUB_REPO = "FoundationVision/var"
LICENCE = "MIT (FoundationVision/VAR)"
VAE = RemoteFile(VAE_FILE, repo=HUB_REPO)
PAPER_MODELS = {  # depth: (image side, parameters, FID)
    16: (256, "310M", "3.55"),
    20: (256, "600M", "2.95"),
    24: (256, "1.0B", "2.33"),
    30: (256, "2.0B", "1.97 (1.80 as VAR-d30-re)"),
    36: (512, "2.3B", "2.63"),
}
CHECKPOINTS = (
    PublishedCheckpoint(
        "var-tokenizer",
        (VAE,),
        f"the multi-scale VQVAE every VAR model shares ({VAE_FILE}): the tokenizer stage only",
        LICENCE,
    ),
    *(
        PublishedCheckpoint(
            f"var-d{depth}",
            (VAE, RemoteFile(f"var_d{depth}.pth", repo=HUB_REPO)),
            f"VAR-d{depth}, {params} parameters, class-conditional ImageNet {side}x{side}",
            LICENCE,
            f"FID {fid} on ImageNet {side}x{side}",
            preset=f"d{depth}",
        )
        for depth, (side, params, fid) in PAPER_MODELS.items()
    ),
)


# (official key pattern, zoo key) in order; the first match wins. \g<n> keeps a group.
VQVAE_RULES: list[tuple[str, str | None]] = [
    (r"quantize\.embedding\.weight", "quantizer.codebook"),
    (r"quantize\.quant_resi\.qresi_ls\.(\d+)\.(weight|bias)", r"quantizer.phis.\1.\2"),
    (r"quantize\.quant_resi\.qresi\.(weight|bias)", r"quantizer.phis.0.\1"),
    (r"quantize\.quant_resi\.(\d+)\.(weight|bias)", r"quantizer.phis.\1.\2"),
    (r"quantize\.ema_vocab_hit_SV", "quantizer.usage"),
    (r"((?:encoder|decoder)\.(?:mid\.attn_1|(?:down|up)\.\d+\.attn\.\d+))\.qkv\.(weight|bias)", r"\1.qkv.\2"),
    # the rest keeps its name, except taming-style separate q/k/v convs (official VAR fuses them)
    (r"((?:encoder|decoder)\.(?!.*attn(?:_1|\.\d+)\.[qkv]\.)[\w.]+|(?:post_)?quant_conv\.(?:weight|bias))", r"\1"),
]
TRANSFORMER_RULES: list[tuple[str, str | None]] = [
    (r"lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias", DROP),
    (r"pos_start", "pos_start"),
    (r"pos_1LC", "position_embedding"),
    (r"class_emb\.weight", "class_embedding.weight"),
    (r"lvl_embed\.weight", "level_embedding.weight"),
    (r"(word_embed|head|shared_ada_lin\.1)\.(weight|bias)", r"\1.\2"),
    (r"head_nm\.ada_lin\.1\.(weight|bias)", r"head_norm.ada_lin.1.\1"),
    (r"blocks\.(\d+)\.attn\.scale_mul_1H11", r"blocks.\1.attention.log_scale"),
    (r"blocks\.(\d+)\.attn\.(q_bias|v_bias)", r"blocks.\1.attention.\2"),
    (r"blocks\.(\d+)\.attn\.mat_qkv\.weight", r"blocks.\1.attention.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attention.proj.\2"),
    (r"blocks\.(\d+)\.(ffn\.fc[12]|ada_lin\.1)\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"blocks\.(\d+)\.ada_gss", r"blocks.\1.ada_gss"),
]


@dataclass
class _Conversion:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # zoo key -> tensor
    sources: dict[str, tuple[PublishedFile, str]] = field(default_factory=dict)  # zoo key -> (file, official key)

    def add(self, file: PublishedFile, official: str, key: str, tensor: torch.Tensor) -> None:
        self.tensors[key] = tensor
        self.sources[key] = (file, official)

    def origin(self, key: str) -> tuple[Path, str]:
        """(file, official key) of zoo's `key`, for errors."""
        file, official = self.sources[key]
        return file.path, official


def _is_vqvae(tensors: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(("encoder.", "decoder.", "quantize.")) for key in tensors)


def _is_transformer(tensors: dict[str, torch.Tensor]) -> bool:
    return any(key in tensors for key in ("class_emb.weight", "pos_1LC", "head_nm.ada_lin.1.weight"))


def _readable(tensor: torch.Tensor) -> bool:
    return tensor.device.type != "meta"


class OfficialVARImporter(Importer):
    model = "var"
    format = "official"
    description = (
        f"FoundationVision/VAR's released weights (Hugging Face hub repo FoundationVision/var): the VQVAE "
        f"{VAE_FILE} with one transformer var_d16.pth, var_d20.pth, var_d24.pth, var_d30.pth (256 px) or "
        f"var_d36.pth (512 px), in either order; the VQVAE alone imports the tokenizer only"
    )
    checkpoints = CHECKPOINTS

    def convert(self, files: list[Path]) -> Converted:
        return self.convert_state_dicts(
            {Path(path): tensors_in(load_checkpoint(path), "VAR", Path(path)) for path in files}
        )

    def convert_state_dicts(self, state_dicts: dict[Path, dict[str, torch.Tensor]]) -> Converted:
        """`convert` on state dicts already read (`path` names them in errors); tensors may be
        on the meta device (shapes only)."""
        vqvae, transformer = self._identify(
            [PublishedFile(Path(path), tensors, "an official VAR file") for path, tensors in state_dicts.items()]
        )
        notes: list[str] = []
        conversion = _Conversion()  # first the names: a file of another model fails on its first foreign key
        self._map(vqvae, VQVAE_RULES, "tokenizer.", conversion)
        if transformer is not None:
            self._map(transformer, TRANSFORMER_RULES, "transformer.", conversion)
        config: dict[str, Any] = {"tokenizer": {}}
        if transformer is not None:
            config["transformer"] = self._transformer_config(transformer, notes)
            patch_nums = self._patch_nums_of_transformer(transformer)
        else:
            patch_nums = self._patch_nums_of_vqvae(vqvae, notes)
        config["tokenizer"] = self._tokenizer_config(vqvae, patch_nums, notes)
        self._check_against_model(config, conversion, vqvae, transformer)
        if transformer is not None:
            notes.append(
                "dropped the buffers zoo rebuilds from the config: lvl_1L, attn_bias_for_masking, "
                "blocks.*.attn.zero_k_bias (checked to be zero)"
            )
        notes.append(
            "quantize.ema_vocab_hit_SV (per-scale running code hits) has no exact counterpart: "
            "tokenizer.quantizer.usage (one running count over all scales) is its sum over scales"
        )
        stages = ["tokenizer", "transformer"] if transformer is not None else ["tokenizer"]
        return Converted(config=config, tensors=conversion.tensors, stages=stages, notes=notes)

    # --- which file is which -------------------------------------------------------------

    @staticmethod
    def _identify(loaded: list[PublishedFile]) -> tuple[PublishedFile, PublishedFile | None]:
        vqvaes, transformers = [], []
        for file in loaded:
            if _is_transformer(file.tensors):
                transformers.append(file)
            elif _is_vqvae(file.tensors):
                vqvaes.append(file)
            else:
                first = next(iter(file.tensors))
                raise file.fail(
                    first,
                    f"is neither an official VAR VQVAE key nor a VAR transformer key; pass {VAE_FILE} and a var_d*.pth",
                )
        if len(vqvaes) > 1 or len(transformers) > 1:
            many = vqvaes if len(vqvaes) > 1 else transformers
            raise CheckpointError(
                f"{many[1].path}: a second {'VQVAE' if many is vqvaes else 'transformer'} file; "
                "pass one VQVAE and at most one transformer"
            )
        if not vqvaes:
            names = ", ".join(str(file.path) for file in transformers) or "no files"
            raise CheckpointError(f"missing VAE file: {names} holds a VAR transformer; pass {VAE_FILE} too")
        return vqvaes[0], transformers[0] if transformers else None

    # --- config from the tensors -----------------------------------------------------------

    @staticmethod
    def _tokenizer_config(vqvae: PublishedFile, patch_nums: list[int], notes: list[str]) -> dict[str, Any]:
        conv_in = vqvae.get("encoder.conv_in.weight")  # (ch, 3, 3, 3)
        codebook = vqvae.get("quantize.embedding.weight")  # (V, Cvae)
        channels, levels = conv_in.shape[0], vqvae.count(r"encoder\.down\.(\d+)\.")
        if levels == 0:
            raise vqvae.fail("encoder.down.0.block.0.conv1.weight", "is missing; is this an official VAR VQVAE?")
        multipliers = []
        for level in range(levels):
            key = f"encoder.down.{level}.block.0.conv1.weight"
            width = vqvae.get(key).shape[0]
            if width % channels:
                raise vqvae.fail(
                    key,
                    f"has shape {tuple(vqvae.tensors[key].shape)}, not a multiple of "
                    f"encoder.conv_in's {channels} channels",
                )
            multipliers.append(width // channels)
        latent = patch_nums[-1]
        attention = f"encoder.down.{levels - 1}.attn.0.qkv.weight" in vqvae.tensors
        phis, layout = _phi_layout(vqvae)
        if phis == 0:
            phi = {"phi_ratio": 0.0}
            notes.append("the VQVAE has no phi convolutions (quant_resi 0): phi_ratio is 0")
        else:
            # non-shared with one phi per scale is zoo's phi_count 0; otherwise the official
            # choice of phi per scale depends on the count alone, as zoo's phi_count K
            phi = {"phi_count": 0 if layout == "non-shared" and phis == len(patch_nums) else phis}
            notes.append(
                f"phi ratio (quant_resi) is not stored in the files: the official 0.5 is assumed; "
                f"{layout} phi layout with {phis} convolution(s)"
            )
        return {
            "resolution": latent * 2 ** (levels - 1),
            "channels": channels,
            "channel_multipliers": multipliers,
            "res_blocks": vqvae.count(r"encoder\.down\.0\.block\.(\d+)\."),
            "attention_resolutions": [latent] if attention else [],
            "mid_attention": "encoder.mid.attn_1.qkv.weight" in vqvae.tensors,
            "code_dim": codebook.shape[1],
            "codebook_size": codebook.shape[0],
            "patch_nums": patch_nums,
            "quant_conv_kernel": vqvae.get("quant_conv.weight").shape[-1],
            **phi,
        }

    @staticmethod
    def _transformer_config(transformer: PublishedFile, notes: list[str]) -> dict[str, Any]:
        classes, width = transformer.get("class_emb.weight").shape
        depth = transformer.count(r"blocks\.(\d+)\.")
        if depth == 0:
            raise transformer.fail("blocks.0.attn.mat_qkv.weight", "is missing; is this an official VAR transformer?")
        hidden = transformer.get("blocks.0.ffn.fc1.weight").shape[0]
        scale = transformer.tensors.get("blocks.0.attn.scale_mul_1H11")  # (1, H, 1, 1) with L2-norm attention
        if scale is not None:
            heads = scale.shape[1]
        else:
            heads = depth
            notes.append("attention without L2 norm stores no head count: heads = depth, as the official build")
        return {
            "depth": depth,
            "width": None if width == 64 * depth else width,  # None: the paper's rule 64 * depth
            "heads": None if heads == depth else heads,  # None: the paper's rule, heads = depth
            "mlp_ratio": hidden / width,
            "attention_l2_norm": scale is not None,
            "shared_adaln": "shared_ada_lin.1.weight" in transformer.tensors,
            "num_classes": classes - 1,  # the last class is the unconditional one
        }

    @staticmethod
    def _patch_nums_of_transformer(transformer: PublishedFile) -> list[int]:
        """From the level of every position (`lvl_1L`), or from (scales, L) for the paper's lists."""
        positions = transformer.get("pos_1LC")  # (1, L, C)
        scales = transformer.get("lvl_embed.weight").shape[0]
        levels = transformer.tensors.get("lvl_1L")  # (1, L) int64: the scale of every position
        if levels is not None and _readable(levels):
            levels = levels.flatten().long()
            if levels.numel() == 0 or levels.min() < 0:
                raise transformer.fail("lvl_1L", "holds no scale indices")
            counts = torch.bincount(levels, minlength=scales).tolist()
            sides = [math.isqrt(count) for count in counts]
            if len(counts) != scales or any(side * side != count for side, count in zip(sides, counts, strict=True)):
                raise transformer.fail("lvl_1L", f"gives {counts} positions per scale, not squares of {scales} sides")
            return sides
        for patch_nums in PAPER_PATCH_NUMS.values():
            if len(patch_nums) == scales and sum(n * n for n in patch_nums) == positions.shape[1]:
                return list(patch_nums)
        raise transformer.fail(
            "pos_1LC",
            f"has shape {tuple(positions.shape)}: no lvl_1L and {scales} scales "
            "of no known patch_nums list give that length",
        )

    @staticmethod
    def _patch_nums_of_vqvae(vqvae: PublishedFile, notes: list[str]) -> list[int]:
        """A VQVAE file alone does not record its scales, only how many (the rows of its
        per-scale hit counts): 10 are the paper's 256 px list; n others are 1..n."""
        hits = vqvae.tensors.get("quantize.ema_vocab_hit_SV")
        phis, layout = _phi_layout(vqvae)
        if hits is not None and hits.ndim == 2 and hits.shape[0] >= 2:
            scales = hits.shape[0]
        else:  # non-shared phi: one per scale; otherwise the paper's 10
            scales = phis if layout == "non-shared" and phis >= 2 else 10
        paper = PAPER_PATCH_NUMS[256]
        patch_nums = list(paper) if scales == len(paper) else list(range(1, scales + 1))
        notes.append(
            f"a VQVAE alone does not record its patch_nums: {scales} scales taken as {patch_nums}; "
            "import it with its transformer file, or set tokenizer.patch_nums, if that is wrong"
        )
        return patch_nums

    # --- keys ----------------------------------------------------------------------------

    @staticmethod
    def _map(file: PublishedFile, rules: list[tuple[str, str | None]], prefix: str, out: _Conversion) -> None:
        for official, tensor in file.tensors.items():
            rule = matching_rule(rules, official)
            if rule is None:
                raise file.fail(official, "maps to nothing in zoo's VAR; the file belongs to another model or version")
            pattern, target = rule
            if target is None:
                if official.endswith("zero_k_bias") and _readable(tensor) and bool(tensor.any()):
                    raise file.fail(official, "is not zero: zoo's attention has no key bias")
                continue
            key = prefix + re.sub(pattern, target, official)
            if official in ("pos_start", "pos_1LC"):
                tensor = tensor.reshape(tensor.shape[-2:])  # (1, n, C) -> (n, C)
            elif official == "quantize.ema_vocab_hit_SV":
                tensor = tensor.float().sum(0)  # (S, V) -> (V,)
            elif key.endswith((".qkv.weight", ".qkv.bias")) and prefix == "tokenizer.":
                for name, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):  # (3C, ...) -> 3 x (C, ...)
                    out.add(file, official, key.replace(".qkv.", f".{name}."), part)
                continue
            out.add(file, official, key, tensor)

    @staticmethod
    def _check_against_model(
        config: dict[str, Any], out: _Conversion, vqvae: PublishedFile, transformer: PublishedFile | None
    ) -> None:
        """Every converted tensor must fit the model built from the inferred config (on the
        meta device: no memory); no tokenizer key may be missing, nor, with a transformer
        file, any transformer key."""
        from zoo_var.model import VARModel

        var_config = config_from_tensors(VARConfig, config, vqvae.path, "VAR")
        for key in check_fit(out.tensors, meta_shapes(lambda: VARModel(var_config)), "zoo's VAR", out.origin):
            file = vqvae if key.startswith("tokenizer.") else transformer
            if file is not None:
                raise CheckpointError(f"{file.path}: no tensor for zoo's {key}; is the file complete?")


def _phi_layout(vqvae: PublishedFile) -> tuple[int, str]:
    """(number of phi convolutions, official layout name) from the quant_resi keys."""
    partially = vqvae.count(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.")
    if partially:
        return partially, "partially shared"
    if "quantize.quant_resi.qresi.weight" in vqvae.tensors:
        return 1, "shared"
    return vqvae.count(r"quantize\.quant_resi\.(\d+)\."), "non-shared"
