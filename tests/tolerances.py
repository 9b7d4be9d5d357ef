"""Float tolerances of the suite, derived rather than tuned to one machine.

Two correct float32 computations of the same value differ by rounding alone: the kernels
that run them (ATen's AVX-512, AVX2 or plain loops; oneDNN's and MKL's, chosen per CPU) add
in different orders. One rounding moves a value by at most eps/2 of its magnitude
(eps = 2**-23); the roundings of `depth` layers in a row have no preferred sign and add like
a random walk, so the drift grows like sqrt(depth) (the probabilistic error bound, Higham,
"Accuracy and Stability of Numerical Algorithms", 2nd ed., §3.5). Hence

    rounding_bound(reference, depth) = K * eps * max|reference| * sqrt(depth)

with `depth` the weight matrices on the way (`depth_of`: convolutions, linear layers,
codebooks) and K what one layer adds by itself (a sum of up to ~1000 products) with a
margin. Measured over every comparison that uses it, on AVX-512 (the machine the issue
failed on), AVX2 and no vector unit (ATEN_CPU_CAPABILITY=avx2/default with
DNNL_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS to match), the largest error was
4.5 * eps * max|reference| * sqrt(depth) (the VAR fixture's encoder, on the plain
kernels); K = 16 leaves 3.5x. AMX adds bf16 and int8 kernels only: float32 runs the
AVX-512 ones there.

A computation may amplify rounding more than that: a decoder whose pixels are much
smaller than its features. Where the reference shows it (the official VAR code's two
routes to the same image), the bound comes from that spread instead (test_var_import).

A bug (a misplaced weight, a missing layer, a wrong scale) moves outputs by 1e-3 or more;
these bounds stay below 1e-4 for every comparison in the suite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

EPS32 = float(torch.finfo(torch.float32).eps)  # 2**-23
EPS16 = float(torch.finfo(torch.float16).eps)  # 2**-10: fp16 keeps 11 significant bits
K = 16


def magnitude(reference: torch.Tensor | np.ndarray | float) -> float:
    """The largest absolute value of `reference` (1 for an empty one)."""
    array = reference.detach().double().cpu().numpy() if isinstance(reference, torch.Tensor) else np.asarray(reference)
    return float(np.abs(array).max()) if array.size else 1.0


def rounding_bound(reference: torch.Tensor | np.ndarray | float, depth: int) -> float:
    """The largest difference rounding alone may make between two float32 computations of
    `reference` through `depth` layers: K * eps * max|reference| * sqrt(depth)."""
    return K * EPS32 * magnitude(reference) * math.sqrt(max(depth, 1))


def depth_of(*modules: nn.Module) -> int:
    """Layers that round a sum of products in `modules`: their weight tensors of two or more
    dimensions. Layers side by side (q, k and v) count each: the bound stays on the safe side."""
    return sum(parameter.dim() >= 2 for module in modules for parameter in module.parameters())


def assert_within_rounding(actual, expected, depth: int, msg: str | None = None) -> None:
    """`actual` is `expected` but for rounding through `depth` layers: every element within
    rounding_bound(expected, depth). Tensors or arrays."""
    bound = rounding_bound(expected, depth)
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=0, atol=bound, msg=msg)
    else:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=bound, err_msg=msg or "")


def assert_same_training(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], steps: int) -> None:
    """The weights of two trainings that add the same gradients in other orders (micro-batches,
    processes, compiled kernels): each of `steps` optimizer steps rounds through the model's
    layers, and the steps add up like layers do: rounding_bound(weight, steps * layers)."""
    assert expected.keys() == found.keys()
    layers = sum(tensor.dim() >= 2 for tensor in expected.values())
    for key, value in expected.items():
        assert_within_rounding(found[key], value, steps * layers, msg=key)
