"""Data sets encoded once through a frozen network and kept in the run's cache directory.

A later stage often trains on what an earlier stage's network makes of the data: VAR's
transformer on the tokenizer's token maps, VQ-VAE-2's priors on the autoencoder's codes.
Encoding is done once per set of weights: the cache file is named after a fingerprint of
the encoder's weights, so a retrained encoder writes a new file and never reads codes of
the old weights. Files are written atomically (`zoo.checkpoint.atomic_save_tensors`), so
several processes of a DDP run may write the same file at once; one that cannot be read
is encoded again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from zoo.checkpoint import atomic_save_tensors, load_tensors
from zoo.errors import RunError

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = "1"  # bump when the fingerprint's recipe changes


def weights_fingerprint(module: nn.Module) -> str:
    """16 hex digits that change whenever any tensor of `module.state_dict()` does: names,
    dtypes, shapes and bytes (buffers included, e.g. a quantiser's codebook)."""
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_encoding(
    cache_dir: Path,
    name: str,
    encoder: nn.Module,
    encode: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """`encode()`'s tensors, computed once per weights of `encoder` and stored in
    `cache_dir/<name>-<fingerprint>.safetensors`; `name` tells the encoded sets apart
    (e.g. "var-tokens-train"). `encode` must be a function of the weights (and the run's
    config) alone and runs with `encoder` in eval mode."""
    path = Path(cache_dir) / f"{name}-{weights_fingerprint(encoder)}.safetensors"
    if path.is_file():
        try:
            return load_tensors(path)
        except RunError as error:
            logger.warning("%s; encoding the data again", error)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            tensors = {key: value.detach().cpu().contiguous() for key, value in encode().items()}
    finally:
        encoder.train(was_training)
    atomic_save_tensors(path, tensors, {"fingerprint": path.stem.rsplit("-", 1)[1]})
    return tensors
