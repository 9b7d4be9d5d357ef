"""Geometry of the token pyramid, shared by the model and the torch-free runtime (numpy only)."""

from __future__ import annotations

import numpy as np


def scale_starts(patch_nums: list[int]) -> list[int]:
    """Offsets of every scale's tokens in the concatenated sequence, plus its length L at the end."""
    return [int(sum(side * side for side in patch_nums[:k])) for k in range(len(patch_nums) + 1)]


def area_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) float64: row i averages source cells [floor(i*s/t), ceil((i+1)*s/t)),
    which is torch's adaptive average pooling (interpolate mode='area') along one axis."""
    matrix = np.zeros((target, source))
    for i in range(target):
        start, end = (i * source) // target, -((-(i + 1) * source) // target)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix
