"""The caption tokenizer: a byte-pair encoding trained on the training captions with the
`tokenizers` library (no torch, so the export runtime uses this module too).

Training is a deterministic function of the captions and the text config. The tokenizer
travels with the model as JSON (see `CaptionModel.get_extra_state`), so a run directory
and an export directory decode exactly as training encoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from zoo.errors import ConfigError, DataError

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))  # the trainer gives special tokens the first ids


def train_tokenizer(captions: Iterable[str], vocab_size: int, max_length: int, lowercase: bool = True) -> Tokenizer:
    """BPE over whitespace-separated words (Metaspace, so decoding restores the spaces).
    A small caption set stops merging early and has fewer than `vocab_size` tokens."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    steps = [normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else []), normalizers.Strip()]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=max(vocab_size // 4, 1),  # leave room for merges in a small vocabulary
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(captions), trainer)
    if tokenizer.get_vocab_size() > vocab_size:
        raise ConfigError(f"the captions need {tokenizer.get_vocab_size()} tokens; raise text.vocab_size")
    if tokenizer.get_vocab_size() == len(SPECIAL_TOKENS):
        raise DataError("the captions are empty; a caption set needs text to train the tokenizer")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS_ID), ("[EOS]", EOS_ID)]
    )
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]")
    return tokenizer


def tokenizer_from_json(text: str) -> Tokenizer:
    return Tokenizer.from_str(text)


def encode(tokenizer: Tokenizer, captions: Sequence[str]) -> np.ndarray:
    """(N, T) int64: [BOS] caption [EOS] then [PAD]s up to the longest, T <= max_length."""
    return np.array([encoding.ids for encoding in tokenizer.encode_batch(list(captions))], dtype=np.int64)


def decode(tokenizer: Tokenizer, tokens: Sequence[int]) -> str:
    """Generated ids (after [BOS]) -> text, stopping at the first [EOS]."""
    tokens = list(tokens)
    if EOS_ID in tokens:
        tokens = tokens[: tokens.index(EOS_ID)]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def normalize(tokenizer: Tokenizer, caption: str) -> str:
    """A reference caption as the tokenizer sees it (e.g. lowercased), spaces collapsed,
    so that it compares with decoded captions."""
    return " ".join(tokenizer.normalizer.normalize_str(caption).split())
