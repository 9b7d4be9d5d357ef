"""Vector quantisation shared by every discrete-latent model.

`VectorQuantizer` covers both codebook update rules in use: by loss (VQ-VAE / VQGAN, with
taming's `legacy` placement of beta) and by exponential moving averages (VQ-VAE-2).
Codes that go unused are restarted from recent encoder outputs, the standard cure for
codebook collapse.

The pieces every quantiser in the zoo shares live here once:

- `nearest_code_indices` / `codes_from_features`: features -> index of the nearest code;
- `count_code_usage`: code hits of the global batch (the one rule under DDP: counts are
  summed over processes, so N processes track usage like one with N times the batch);
- `restart_dead_codes`: codes whose running usage fell below a threshold restart on
  encoder outputs of the current batch, the same vectors on every process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def nearest_code_indices(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared L2) for every row of `vectors`.

    vectors (N, C), codebook (K, C) -> (N,) int64. Distances are taken in fp32 even under
    autocast: in bf16 near-ties pick the wrong code often enough to hurt.
    """
    if torch.is_autocast_enabled(vectors.device.type):
        with torch.autocast(vectors.device.type, enabled=False):
            return nearest_code_indices(vectors.float(), codebook.float())
    # codebook @ vectors.T, not vectors @ codebook.T: onnxruntime's int8 export quantises
    # MatMuls whose second operand is a constant, and quantised distances pick wrong codes.
    distances = (
        vectors.pow(2).sum(1, keepdim=True) - 2 * (codebook @ vectors.t()).t() + codebook.pow(2).sum(1)[None, :]
    )  # (N, K)
    return distances.argmin(dim=1)


def codes_from_features(features: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map, codebook (K, C) -> (B, H, W) int64 nearest-code indices."""
    batch, channels, height, width = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, channels)  # (B*H*W, C)
    return nearest_code_indices(flat, codebook).view(batch, height, width)


def count_code_usage(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Hits (K,) float of every code in the global batch: the local counts summed over the
    processes of a DDP run, so every process holds the same counts."""
    return _all_reduce_sum(torch.bincount(indices.flatten(), minlength=num_codes).float())


@torch.no_grad()
def restart_dead_codes(
    codebook: torch.Tensor,
    usage: torch.Tensor,
    threshold: float,
    candidates: torch.Tensor,
    hits_per_batch: float,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Restart every code whose running usage (K,) is below `threshold` on a random row of
    `candidates` (N, C), encoder outputs this batch; in place on `codebook` (K, C) and `usage`.

    `usage` must be the same on every process (tracked with `count_code_usage`), so all agree
    on which codes are dead. The candidates of every process are gathered in rank order (the
    global batch's order) and rank 0 draws from all of them and broadcasts its draw, so all
    restart identically, from the same pool one process with the whole batch draws from. A restarted code gets a grace period of one expected hit per
    batch, `hits_per_batch / K` (at least 1). Returns (dead mask (K,), new vectors), or None
    when no code is dead.
    """
    dead = usage < threshold
    num_dead = int(dead.sum())
    if num_dead == 0:
        return None
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        candidates = _gathered_in_rank_order(candidates)
    picks = torch.randint(0, candidates.shape[0], (num_dead,), device=candidates.device)
    fresh = candidates[picks].to(codebook.dtype)
    if distributed:
        dist.broadcast(fresh, src=0)
    codebook.data[dead] = fresh
    usage[dead] = max(1.0, hits_per_batch / codebook.shape[0])
    return dead, fresh


def _gathered_in_rank_order(rows: torch.Tensor) -> torch.Tensor:
    """(N_r, C) rows of every process, concatenated in rank order; processes may hold different N_r."""
    counts = [torch.zeros((), dtype=torch.long, device=rows.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor(rows.shape[0], device=rows.device))
    longest = int(max(counts))
    padded = F.pad(rows, (0, 0, 0, longest - rows.shape[0]))
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([part[: int(count)] for part, count in zip(gathered, counts, strict=True)])


def code_statistics(indices: torch.Tensor, num_codes: int) -> tuple[float, float]:
    """(fraction of codes used, perplexity) of a set of code indices."""
    return count_statistics(torch.bincount(indices.flatten(), minlength=num_codes))


def count_statistics(counts: torch.Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity) from each code's count (num_codes,), e.g. summed
    batch by batch over a split that is never held whole."""
    counts = counts.float()
    probs = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    return (counts > 0).float().mean().item(), perplexity.item()


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, C, H, W), straight-through: gradients flow to the input
    indices: torch.Tensor  # (B, H, W) int64
    loss: torch.Tensor  # codebook + commitment terms (commitment only under EMA updates)
    perplexity: torch.Tensor  # of this batch's code distribution


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser of a (B, C, H, W) feature map onto `num_codes` vectors.

    ema_decay=None: the codebook learns from the loss ||sg[z] - e||^2 + beta ||z - sg[e]||^2;
    `legacy=True` keeps taming-transformers' original placement of beta on the codebook
    term instead, which published VQGAN checkpoints were trained with.
    ema_decay=d: the codebook follows EMA cluster averages (VQ-VAE-2); the loss is the
    commitment term alone.
    dead_code_threshold: a code whose EMA usage (expected hits per global batch, summed over
    processes under DDP) falls below it is re-initialised from a random encoder output of
    the current batch (`restart_dead_codes`); None disables.
    """

    codebook: torch.Tensor  # (K, C): a Parameter, or a buffer under EMA
    cluster_size: torch.Tensor  # (K,) buffer, EMA only
    cluster_sum: torch.Tensor  # (K, C) buffer, EMA only
    usage: torch.Tensor  # (K,) buffer

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        legacy: bool = True,
        ema_decay: float | None = None,
        dead_code_threshold: float | None = 1e-3,
        usage_decay: float = 0.99,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_codes, self.dim, self.beta, self.legacy = num_codes, dim, beta, legacy
        self.ema_decay, self.dead_code_threshold, self.usage_decay, self.eps = (
            ema_decay,
            dead_code_threshold,
            usage_decay,
            eps,
        )
        codebook = torch.empty(num_codes, dim).uniform_(-1 / num_codes, 1 / num_codes)
        if ema_decay is None:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_size", torch.zeros(num_codes))
            self.register_buffer("cluster_sum", codebook.clone())
        self.register_buffer("usage", torch.ones(num_codes))

    @property
    def rewrites_parameters(self) -> bool:
        """Dead-code restarts write a gradient-trained codebook in place (see zoo.distributed)."""
        return self.ema_decay is None and self.dead_code_threshold is not None

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        batch, channels, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, channels)  # (N, C)
        indices = codes_from_features(z.detach(), self.codebook).flatten()  # (N,)
        quantized_flat = F.embedding(indices, self.codebook)
        one_hot = F.one_hot(indices, self.num_codes).type(flat.dtype)  # (N, K)

        hits = None
        if self.training:
            hits = count_code_usage(indices, self.num_codes)
            self._track_usage(hits)
            if self.ema_decay is not None:
                self._ema_update(self.ema_decay, flat.detach(), one_hot, hits)

        commitment = F.mse_loss(flat, quantized_flat.detach())
        if self.ema_decay is not None:
            loss = self.beta * commitment
        else:
            codebook_term = F.mse_loss(quantized_flat, flat.detach())
            loss = commitment + self.beta * codebook_term if self.legacy else self.beta * commitment + codebook_term

        quantized_flat = flat + (quantized_flat - flat).detach()
        quantized = quantized_flat.view(batch, height, width, channels).permute(0, 3, 1, 2)
        probs = one_hot.mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())

        if hits is not None and self.dead_code_threshold is not None:
            self._restart_dead_codes(self.dead_code_threshold, flat.detach(), float(hits.sum()))
        return QuantizerOutput(quantized.contiguous(), indices.view(batch, height, width), loss, perplexity)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 -> (B, C, H, W) code vectors."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    def usage_fraction(self) -> float:
        """Share of codes whose recent usage is above the dead-code threshold."""
        threshold = self.dead_code_threshold or 0.0
        return (self.usage > threshold).float().mean().item()

    @torch.no_grad()
    def _track_usage(self, hits: torch.Tensor) -> None:
        self.usage.mul_(self.usage_decay).add_(hits, alpha=1 - self.usage_decay)

    @torch.no_grad()
    def _ema_update(self, decay: float, flat: torch.Tensor, one_hot: torch.Tensor, counts: torch.Tensor) -> None:
        sums = _all_reduce_sum(one_hot.float().t() @ flat.float())  # (K, C)
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        self.cluster_sum.mul_(decay).add_(sums, alpha=1 - decay)
        total = self.cluster_size.sum()
        # Laplace smoothing keeps empty clusters from dividing by zero.
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.cluster_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, threshold: float, flat: torch.Tensor, hits_per_batch: float) -> None:
        restarted = restart_dead_codes(self.codebook, self.usage, threshold, flat, hits_per_batch)
        if restarted is not None and self.ema_decay is not None:
            dead, fresh = restarted
            self.cluster_size[dead] = 1.0
            self.cluster_sum[dead] = fresh


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Statistics over the global batch, so N processes update like one with N times the batch."""
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def init_codebook_from(quantizer: VectorQuantizer, vectors: torch.Tensor) -> None:
    """Initialise a codebook with k random rows of `vectors` (N, C): starts every code alive."""
    with torch.no_grad():
        picks = torch.randperm(vectors.shape[0])[: quantizer.num_codes]
        if picks.numel() < quantizer.num_codes:
            picks = picks.repeat(math.ceil(quantizer.num_codes / picks.numel()))[: quantizer.num_codes]
        quantizer.codebook.data.copy_(vectors[picks])
        if quantizer.ema_decay is not None:
            quantizer.cluster_sum.copy_(vectors[picks])
            quantizer.cluster_size.fill_(1.0)
