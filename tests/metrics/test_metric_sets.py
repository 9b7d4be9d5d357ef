"""The plugins' metric seams (no Inception needed): what each model's MetricSets hold, and that
the sample options draw the requested images."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import TINY_VAR
from tests.plugins.test_quantart import MICRO
from tests.plugins.test_vqvae2_pixelcnn import TINY as TINY_VQVAE2
from zoo import api

CPU = torch.device("cpu")


def first_batches(name, **overrides):
    plugin, config, model = api.create_model(name, **overrides)
    model.eval()
    return (
        plugin,
        config,
        model,
        {made.name: (made.kind, next(iter(made.batches()))) for made in plugin.metric_sets(model, config, CPU)},
    )


def test_var_and_vqvae2_give_their_tokenizer_reconstructions_of_held_out_images():
    for name, overrides, stage in (("var", TINY_VAR, "tokenizer"), ("vqvae2_pixelcnn", TINY_VQVAE2, "vqvae")):
        plugin, config, model, sets = first_batches(
            name, preset=None if name == "vqvae2_pixelcnn" else "digits", **overrides
        )
        assert list(sets) == [stage] and sets[stage][0] == "reconstruction"
        batch = sets[stage][1]
        assert batch.outputs.dtype == np.uint8 and batch.outputs.shape == batch.references.shape
        assert batch.outputs.shape[1:] == (16, 16, 3) and batch.sources is None
        assert not np.array_equal(batch.outputs, batch.references)  # an untrained tokenizer cannot copy

        options = plugin.metric_sample_options(config, 0, 3, 7)
        output = plugin.sample(model, config, options, CPU)
        assert output.images.shape == (3, 16, 16, 3)
        assert output.extras["labels"].tolist() == [0, 1, 2]


def test_quantart_gives_both_vqgans_and_the_transfer_with_style_and_content():
    plugin, config, model, sets = first_batches("quantart", **MICRO)
    assert {name: kind for name, (kind, _) in sets.items()} == {
        "vqgan_photo": "reconstruction",
        "vqgan_art": "reconstruction",
        "transfer": "transfer",
    }
    transfer = sets["transfer"][1]
    assert (
        transfer.sources is not None and transfer.outputs.shape == transfer.sources.shape == transfer.references.shape
    )
    assert transfer.outputs.shape[1:] == (32, 32, 3)
    # the references are the style images and the sources the content photos of the held-out pairs
    assert not np.array_equal(transfer.references, transfer.sources)
    assert plugin.metric_sample_options(config, 0, 3, 0) is None  # no sample set: fid is of the transfer
