"""The sampling toolbox every plugin loop shares (numpy only, no torch).

One convention for every model, the one Hugging Face `generate` uses:

    logits --(/ temperature, in the loop)--> filter_logits(top_k, top_p) --> softmax --> draw

- `top_k = 0` keeps every token; `top_k >= 1` keeps the k largest logits and any logit tied
  with the k-th (so `top_k = 1` keeps the maximum; loops take the argmax for it).
- `top_p = 1.0` keeps every token; below 1 it keeps the smallest set of most likely tokens
  whose probability reaches `top_p` (the most likely token always stays, so `top_p -> 0`
  is greedy). Computed after top-k, on the renormalised probabilities.
- `draw` is inverse-CDF sampling with one uniform number per row, the index
  `np.searchsorted(cdf, u, side="right")`: the first token whose cumulative probability
  exceeds u. A token of probability 0 is never drawn, not even for u = 0.

  Row i of the batch draws from its own generator (`row_generators`: one stream per
  (request seed, row index)), so a request's rows are the same alone or batched with others.

Both engines (torch components, onnxruntime sessions) feed the same logits through these
functions with the same generators, so they draw the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis; -inf logits get probability 0."""
    logits = np.asarray(logits)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (which keeps float32 logits' order exact)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def filter_logits(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """A float64 copy of (..., V) logits with -inf outside the top k (0: off) and outside the
    top-p nucleus (1.0: off); see the module docstring for the exact rule."""
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_k must be >= 0 (0 keeps all) and top_p in [0, 1] (1 keeps all); got {top_k}, {top_p}")
    logits = np.array(logits, dtype=np.float64)  # a copy
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth_largest = np.partition(logits, vocab - top_k, axis=-1)[..., vocab - top_k : vocab - top_k + 1]
        logits[logits < kth_largest] = -np.inf
    if top_p < 1.0:
        order = np.argsort(logits, axis=-1, kind="stable")  # ascending: the most likely token last
        cumulative = np.cumsum(softmax(np.take_along_axis(logits, order, axis=-1)), axis=-1)
        remove_sorted = cumulative <= 1.0 - top_p  # the least likely tokens holding at most 1 - top_p
        remove_sorted[..., -1] = False  # the most likely token always stays
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        logits[remove] = -np.inf
    return logits


def row_generators(seed: int, count: int, start: int = 0) -> list[np.random.Generator]:
    """One generator per batch row `start .. start + count - 1`, each seeded by (seed, row)."""
    return [np.random.default_rng([seed, row]) for row in range(start, start + count)]


def merged_generators(seeds: Sequence[int], counts: Sequence[int]) -> list[np.random.Generator]:
    """The row generators of several requests (a seed and a row count each), one after the
    other: the rows of a merged batch draw what each request's rows draw alone."""
    return [rng for seed, count in zip(seeds, counts, strict=True) for rng in row_generators(seed, count)]


def request_rows(counts: Sequence[int]) -> list[slice]:
    """Each request's rows in a merged batch: counts [2, 1, 3] -> rows 0:2, 2:3, 3:6."""
    ends = np.cumsum(counts).tolist()
    return [slice(end - count, end) for count, end in zip(counts, ends, strict=True)]


def draw(probabilities: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """One index per row of (B, ..., V) probabilities (need not sum to 1) -> (B, ...) int64.

    Batch row b consumes exactly one uniform number per row of its (..., V) block, in
    row-major order, from `rngs[b]` alone."""
    cumulative = np.cumsum(probabilities, axis=-1)
    if len(rngs) != len(cumulative):
        raise ValueError(f"draw needs one generator per batch row: {len(cumulative)} rows, {len(rngs)} generators")
    per_row = cumulative.shape[1:-1]
    uniform = np.stack([rng.random(per_row) for rng in rngs])[..., None] * cumulative[..., -1:]
    index = (cumulative <= uniform).sum(axis=-1)  # = searchsorted(cdf, u, side="right") per row
    return np.minimum(index, cumulative.shape[-1] - 1).astype(np.int64)


def batches(count: int, size: int) -> Iterator[slice]:
    """slice(0, size), slice(size, 2 * size), ... covering range(count)."""
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def run_batched(
    components: Callable[..., dict[str, np.ndarray]], name: str, output: str, batch_size: int, **inputs: np.ndarray
) -> np.ndarray:
    """`components(name, **inputs)[output]` over the rows of `inputs`, `batch_size` rows per
    call, concatenated: bounds the memory a graph call takes."""
    count = len(next(iter(inputs.values())))
    return np.concatenate(
        [
            components(name, **{key: value[rows] for key, value in inputs.items()})[output]
            for rows in batches(count, batch_size)
        ]
    )
