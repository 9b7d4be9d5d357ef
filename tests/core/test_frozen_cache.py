"""zoo.data.cache: data encoded once per frozen-encoder weights, in the run's cache."""

from __future__ import annotations

import torch
from torch import nn

import zoo.data.cache as cache
from zoo.data.cache import cached_encoding, weights_fingerprint


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_the_cache_is_reused_for_the_same_weights_and_rebuilt_for_changed_ones(tmp_path):
    encoder = _encoder().train()
    calls = []

    def encode() -> dict[str, torch.Tensor]:
        calls.append(encoder.training)
        return {"codes": encoder[0].weight.detach().sum(1).round().long() + len(calls), "labels": torch.arange(2)}

    first = cached_encoding(tmp_path, "codes-train", encoder, encode)
    assert calls == [False]
    assert encoder.training  # encoded in eval mode, mode restored
    again = cached_encoding(tmp_path, "codes-train", encoder, encode)
    assert len(calls) == 1
    assert torch.equal(again["codes"], first["codes"])
    assert torch.equal(again["labels"], first["labels"])

    with torch.no_grad():
        encoder[1].running_mean += 1  # a buffer changes the encoder too
    changed = cached_encoding(tmp_path, "codes-train", encoder, encode)
    assert len(calls) == 2
    assert not torch.equal(changed["codes"], first["codes"])
    assert len(list(tmp_path.glob("codes-train-*.safetensors"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_another_name_is_another_file_and_an_unreadable_file_is_encoded_again(tmp_path):
    encoder = _encoder()
    cached_encoding(tmp_path, "codes-train", encoder, lambda: {"x": torch.ones(2)})
    test = cached_encoding(tmp_path, "codes-test", encoder, lambda: {"x": torch.zeros(3)})
    assert test["x"].tolist() == [0.0, 0.0, 0.0]
    path = tmp_path / f"codes-test-{weights_fingerprint(encoder)}.safetensors"
    path.write_bytes(b"not safetensors")
    assert cached_encoding(tmp_path, "codes-test", encoder, lambda: {"x": torch.full((1,), 5.0)})["x"].tolist() == [5.0]


def test_the_fingerprint_sees_names_values_and_dtypes():
    encoder = _encoder()
    base = weights_fingerprint(encoder)
    assert weights_fingerprint(_encoder()) == base
    with torch.no_grad():
        encoder[0].weight[0, 0] += 1e-6
    assert weights_fingerprint(encoder) != base
    assert weights_fingerprint(_encoder().double()) != base
    renamed = nn.Sequential()
    renamed.add_module("first", _encoder()[0])
    renamed.add_module("1", _encoder()[1])
    assert weights_fingerprint(renamed) != base


def test_cache_files_go_through_the_atomic_writer(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(cache, "atomic_save_tensors", lambda path, tensors, metadata=None: written.append(path))
    cached_encoding(tmp_path, "codes-train", _encoder(), lambda: {"x": torch.ones(1)})
    assert len(written) == 1
    assert written[0].parent == tmp_path
    assert not list(tmp_path.iterdir())  # nothing was written behind the writer's back
