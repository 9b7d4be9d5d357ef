"""Fixtures of the metrics tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """A random-weight InceptionV3 state dict in the layout torch-fidelity loads."""
    from torch_fidelity import feature_extractor_inceptionv3 as module

    original = module.load_state_dict_from_url
    module.load_state_dict_from_url = lambda *args, **kwargs: None
    try:
        torch.manual_seed(0)
        cls = module.FeatureExtractorInceptionV3
        load = cls.load_state_dict
        cls.load_state_dict = lambda self, state: None  # keep the random initialisation
        try:
            network = cls("inception-v3-compat", ["2048"])
        finally:
            cls.load_state_dict = load
    finally:
        module.load_state_dict_from_url = original
    # torch's default conv init shrinks activations layer by layer: 90 layers on, every image
    # would give the same features and every figure would be trivially equal. He init keeps
    # their scale, so the figures below measure something.
    for layer in network.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        elif isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.1)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(network.state_dict(), path)
    return path
