"""Caption data for training and evaluation: images with token ids, and the tokenizer's
place in the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from zoo.checkpoint import atomic_write_bytes
from zoo.data import load_images, shapes
from zoo.data.base import dataset_length
from zoo.data.shapes import COLORS, COUNT_WORDS, POSITION_PHRASES, SHAPES, SIZES
from zoo.errors import DataError
from zoo.plugin import StageContext
from zoo_multimodal_caption.config import CaptionConfig
from zoo_multimodal_caption.model import CaptionModel
from zoo_multimodal_caption.text_tokenizer import encode, tokenizer_from_json, train_tokenizer

TOKENIZER_CACHE = "tokenizer.json"


def captioned_images(config: CaptionConfig, split: str) -> Dataset:
    """Items {"image", "caption"} (+ "attributes" for shapes) of the configured caption data."""
    data = config.data
    if data.source == "shapes":
        count = data.train_count if split == "train" else data.test_count
        return shapes(config.image.size, count, split, config.seed, data.max_objects)
    dataset = load_images(data.source, config.image.size, split, config.seed, augment=config.augment)
    if getattr(dataset, "captions", None) is None:  # a caption set, or shards packed from one
        raise DataError(
            f"data.source {data.source}: no captions.jsonl or captions.csv there (nor .txt members in its shards); "
            "the caption model needs a caption set"
        )
    return dataset


def captions_of(dataset: Dataset) -> list[str]:
    """Every caption of a data set: its `captions` list where it has one (no image is
    decoded), else read item by item."""
    captions = getattr(dataset, "captions", None)
    if captions is not None:
        return list(captions)
    return [dataset[index]["caption"] for index in range(dataset_length(dataset))]


class TokenizedCaptions(Dataset):
    """Items {"image": (3, S, S), "tokens": (T,) int64}: [BOS] caption [EOS] padded to the set's longest."""

    def __init__(self, images: Dataset, tokens: np.ndarray) -> None:
        self.images = images
        self.tokens = torch.from_numpy(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index]["image"], "tokens": self.tokens[index]}


def tokenizer_for(model: CaptionModel, config: CaptionConfig) -> Tokenizer:
    """The model's tokenizer; a model that has none yet (freshly built) gets the one its
    training stage would train: a deterministic function of the training captions and the
    text config."""
    if model.tokenizer_json is None:
        text = config.text
        captions = captions_of(captioned_images(config, "train"))
        model.set_tokenizer(train_tokenizer(captions, text.vocab_size, text.max_length, text.lowercase))
    return model.tokenizer


def stage_tokenizer(context: StageContext[CaptionConfig, CaptionModel]) -> Tokenizer:
    """The tokenizer a training stage uses, installed in the model and kept in the run's
    cache. The cached one wins (a resumed run); else the model's own (weights from an
    earlier run were trained with it); else a new one (see tokenizer_for)."""
    path = Path(context.cache_dir) / TOKENIZER_CACHE
    if path.is_file():
        context.model.set_tokenizer(tokenizer_from_json(path.read_text()))
    tokenizer = tokenizer_for(context.model, context.config)
    atomic_write_bytes(path, tokenizer.to_str().encode())
    return tokenizer


def tokenized(config: CaptionConfig, split: str, tokenizer: Tokenizer) -> TokenizedCaptions:
    images = captioned_images(config, split)
    return TokenizedCaptions(images, encode(tokenizer, captions_of(images)))


def parse_shapes_caption(text: str) -> dict[str, str | None]:
    """The attributes a generated caption states in the grammar of `zoo.data.shapes`
    ("two small red circles on the left"); None where it states none."""
    words = text.split()
    found: dict[str, str | None] = {
        "count": "one" if words[:1] == ["a"] else next((w for w in words[:1] if w in COUNT_WORDS), None),
        "size": next((w for w in words if w in SIZES), None),
        "color": next((w for w in words if w in COLORS), None),
        "shape": next((w.removesuffix("s") for w in words if w.removesuffix("s") in SHAPES), None),
        "position": next((key for key, phrase in POSITION_PHRASES.items() if phrase in text), None),
    }
    return found
