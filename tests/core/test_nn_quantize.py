"""zoo.nn.quantize: features -> codes, usage counting under DDP and dead-code restarts."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import zoo.nn.quantize as quantize
from zoo.nn.quantize import (
    VectorQuantizer,
    codes_from_features,
    count_code_usage,
    nearest_code_indices,
    restart_dead_codes,
)


def test_codes_are_the_brute_force_nearest_codes():
    generator = torch.Generator().manual_seed(0)
    features, codebook = torch.randn(3, 5, 4, 6, generator=generator), torch.randn(17, 5, generator=generator)
    codes = codes_from_features(features, codebook)
    assert codes.shape == (3, 4, 6)
    assert codes.dtype == torch.int64
    vectors = features.permute(0, 2, 3, 1).reshape(-1, 5)  # (B*H*W, C)
    brute_force = torch.stack([((codebook - v).pow(2).sum(1)).argmin() for v in vectors]).view(3, 4, 6)
    assert torch.equal(codes, brute_force)
    assert len(codes.unique()) > 5  # not a degenerate single code


def test_codes_under_bf16_autocast_are_taken_in_fp32():
    generator = torch.Generator().manual_seed(1)
    codebook = torch.randn(64, 16, generator=generator)
    vectors = codebook[torch.arange(64)] + 1e-3 * torch.randn(64, 16, generator=generator)  # near-ties in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = nearest_code_indices(vectors, codebook)
    assert torch.equal(codes, torch.arange(64))


def test_every_quantizer_path_gives_the_same_codes():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(32, 8, dead_code_threshold=None).eval()
    features = torch.randn(2, 8, 5, 5)
    assert torch.equal(quantizer(features).indices, codes_from_features(features, quantizer.codebook))


class FakeWorld:
    """Stands in for torch.distributed in a two-process run seen from rank `rank`: all_reduce
    adds the other rank's tensor, all_gather puts the other rank's rows ("gather", or none)
    beside this one's, broadcast(src=0) copies rank 0's."""

    def __init__(self, rank: int, other: dict[str, torch.Tensor]) -> None:
        self.rank, self.other = rank, other

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def all_reduce(self, tensor: torch.Tensor) -> None:
        tensor += self.other["reduce"]

    def get_world_size(self) -> int:
        return 2

    def all_gather(self, parts: list[torch.Tensor], tensor: torch.Tensor) -> None:
        theirs = self.other.get("gather", tensor.new_zeros((0, *tensor.shape[1:])))
        if tensor.dim() == 0:  # the row counts
            theirs = torch.tensor(theirs.shape[0])
        else:
            theirs = torch.nn.functional.pad(theirs, (0, 0, 0, tensor.shape[0] - theirs.shape[0]))
        parts[self.rank].copy_(tensor)
        parts[1 - self.rank].copy_(theirs)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        assert src == 0
        if self.rank != 0:
            tensor.copy_(self.other["broadcast"])


def test_usage_is_the_sum_over_processes(monkeypatch):
    mine, theirs = torch.tensor([0, 0, 1, 3]), torch.tensor([1, 1, 1, 1, 2])
    other_counts = torch.bincount(theirs, minlength=5).float()
    monkeypatch.setattr(quantize, "dist", FakeWorld(1, {"reduce": other_counts}))
    assert count_code_usage(mine, 5).tolist() == [2.0, 5.0, 1.0, 1.0, 0.0]


def test_dead_codes_restart_from_rank_0_vectors_with_a_grace_period(monkeypatch):
    codebook, usage = torch.zeros(4, 2), torch.tensor([5.0, 0.0, 2.0, 0.0])
    rank_0_vectors = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    monkeypatch.setattr(quantize, "dist", FakeWorld(1, {"broadcast": rank_0_vectors}))
    my_batch = torch.full((6, 2), -7.0)  # rank 1's own candidates are never used
    dead, fresh = restart_dead_codes(codebook, usage, 1.0, my_batch, hits_per_batch=12.0)
    assert dead.tolist() == [False, True, False, True]
    assert torch.equal(codebook[dead], rank_0_vectors)
    assert torch.equal(codebook[~dead], torch.zeros(2, 2))
    assert usage.tolist() == [5.0, 3.0, 2.0, 3.0]  # 12 hits over 4 codes: 3 each for the restarted


def test_one_process_restarts_from_its_own_batch_and_nothing_when_all_live():
    torch.manual_seed(0)
    codebook, usage = torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0])
    candidates = torch.tensor([[4.0, 4.0], [5.0, 5.0]])
    restart_dead_codes(codebook, usage, 0.5, candidates, hits_per_batch=1.0)
    assert codebook[0].tolist() in ([4.0, 4.0], [5.0, 5.0])
    assert usage[0] == 1.0  # grace is at least one hit
    before = codebook.clone()
    assert restart_dead_codes(codebook, usage, 0.5, candidates, 1.0) is None
    assert torch.equal(codebook, before)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_the_quantizer_tracks_global_usage_and_restarts_dead_codes(monkeypatch, ema_decay):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 2, ema_decay=ema_decay, dead_code_threshold=0.5, usage_decay=0.0).train()
    quantizer.codebook.data.copy_(torch.arange(16.0).view(8, 2))
    features = torch.zeros(1, 2, 2, 2)  # every vector hits code 0
    other_counts = torch.zeros(8)
    other_counts[7] = 4.0  # the other process hit code 7 four times
    rank_0_vectors = torch.full((6, 2), 0.25)
    world = FakeWorld(1, {"reduce": other_counts, "broadcast": rank_0_vectors})
    world.all_reduce = lambda tensor: tensor.add_(other_counts) if tensor.shape == (8,) else None
    monkeypatch.setattr(quantize, "dist", world)
    quantizer(features)
    assert quantizer.usage[0] == 4.0
    assert quantizer.usage[7] == 4.0  # code 7 lives through the other process
    assert torch.equal(quantizer.codebook[1:7], rank_0_vectors)
    assert torch.equal(quantizer.usage[1:7], torch.full((6,), 1.0))  # 8 global hits / 8 codes
    if ema_decay is not None:
        assert torch.equal(quantizer.cluster_sum[1:7], rank_0_vectors)


def _restart_on_rank(rank: int, store: str, parts: list[torch.Tensor], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(parts))
    try:
        torch.manual_seed(3)  # as every rank of a run: the same seed
        codebook, usage = torch.zeros(6, 2), torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
        restart_dead_codes(codebook, usage, 0.5, parts[rank], hits_per_batch=1.0)
        save_file({"codebook": codebook}, f"{out}-{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_processes_restart_from_the_pool_of_one_with_the_whole_batch(tmp_path):
    whole = torch.arange(40.0).view(20, 2)  # distinct rows: which row was drawn is visible
    parts = [whole[:12], whole[12:]]  # unequal shares pad the gather
    torch.multiprocessing.spawn(
        _restart_on_rank, args=(str(tmp_path / "store"), parts, str(tmp_path / "codebook")), nprocs=2
    )
    torch.manual_seed(3)
    one = torch.zeros(6, 2)
    restart_dead_codes(one, torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]), 0.5, whole, hits_per_batch=1.0)
    for rank in range(2):
        assert torch.equal(load_file(tmp_path / f"codebook-{rank}.safetensors")["codebook"], one)
    assert (one[[0, 2, 3, 5], 0] >= 24).any()  # some restart drew from rank 1's rows
