"""The torch-free toolbox the plugin loops share: zoo.runtime.sampling and zoo.runtime.images."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tests.conftest import BLOCK_TORCH
from zoo.errors import DataError
from zoo.runtime.images import (
    IMAGE_SUFFIXES,
    center_crop_box,
    image_files,
    read_rgb,
    read_square,
    square_resize,
    to_model_input,
)
from zoo.runtime.sampling import batches, draw, filter_logits, log_softmax, row_generators, run_batched, softmax

PROBABILITIES = np.array([0.5, 0.3, 0.15, 0.05])


def kept(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> list:
    return np.isfinite(filter_logits(logits, top_k, top_p)).tolist()


class FixedUniform:
    """A stand-in generator whose `random(shape)` returns one chosen number."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.full(shape, self.value)


def fixed_uniforms(values: list[float]) -> list[FixedUniform]:
    """One stand-in generator per batch row."""
    return [FixedUniform(value) for value in values]


# -- filter_logits --------------------------------------------------------------------------


def test_the_off_values_keep_every_logit_unchanged():
    logits = np.random.default_rng(0).normal(size=(2, 3, 50)).astype(np.float32)
    filtered = filter_logits(logits, top_k=0, top_p=1.0)
    assert filtered.dtype == np.float64
    np.testing.assert_array_equal(filtered, logits.astype(np.float64))
    np.testing.assert_array_equal(filter_logits(logits), filtered)  # the defaults are the off values
    np.testing.assert_array_equal(filter_logits(logits, top_k=900), filtered)  # k past the vocabulary: all kept


def test_filter_logits_does_not_change_its_input():
    logits = np.log(PROBABILITIES)
    before = logits.copy()
    filter_logits(logits, 1, 0.1)
    np.testing.assert_array_equal(logits, before)


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [
        (1, [True, False, False, False]),
        (2, [True, True, False, False]),
        (3, [True, True, True, False]),
        (4, [True, True, True, True]),
    ],
)
def test_top_k_keeps_the_k_largest(top_k, expected):
    assert kept(np.log(PROBABILITIES), top_k=top_k) == expected


def test_top_k_keeps_logits_tied_with_the_kth():
    assert kept(np.array([1.0, 2.0, 2.0, 0.0]), top_k=1) == [False, True, True, False]


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [
        (0.0, [True, False, False, False]),  # the most likely token always stays
        (0.4, [True, False, False, False]),  # 0.5 alone holds 0.4
        (0.7, [True, True, False, False]),  # 0.5 + 0.3 = 0.8 >= 0.7 > 0.5
        (0.9, [True, True, True, False]),  # 0.95 >= 0.9 > 0.8
        (0.99, [True, True, True, True]),
        (1.0, [True, True, True, True]),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p, expected):
    assert kept(np.log(PROBABILITIES), top_p=top_p) == expected


def test_top_p_applies_to_the_probabilities_left_by_top_k():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    assert kept(logits, top_p=0.5) == [True, True, False, False]  # 0.4 < 0.5
    assert kept(logits, top_k=2, top_p=0.5) == [True, False, False, False]  # renormalised: 4/7 >= 0.5


def test_rows_are_filtered_independently():
    logits = np.log(np.array([[[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]]))  # (1, 2, 4)
    assert kept(logits, top_p=0.7) == [[[True, True, False, False], [False, False, True, True]]]


@pytest.mark.parametrize(("top_k", "top_p"), [(-1, 1.0), (0, 1.5), (0, -0.1)])
def test_out_of_range_settings_are_refused(top_k, top_p):
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        filter_logits(np.zeros(4), top_k, top_p)


# -- softmax and draw -----------------------------------------------------------------------


def test_softmax_and_log_softmax():
    logits = np.array([[1.0, 2.0, -np.inf, 0.5]])
    probabilities = softmax(logits)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0)
    assert probabilities[0, 2] == 0.0
    assert probabilities[0, 1] > probabilities[0, 0] > probabilities[0, 3]
    np.testing.assert_allclose(np.exp(log_softmax(logits)), probabilities)
    np.testing.assert_allclose(softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])  # no overflow


def test_draw_inverts_the_cdf_and_ties_go_right():
    weights = [0.125, 0.125, 0.25, 0.5]  # cdf 0.125, 0.25, 0.5, 1.0, exact in binary
    uniforms = [0.0, 0.1, 0.125, 0.3, 0.5, 0.99]
    drawn = draw(np.tile(weights, (6, 1)), fixed_uniforms(uniforms))
    assert drawn.dtype == np.int64
    assert drawn.tolist() == [0, 0, 1, 2, 3, 3]  # u on a cdf value goes to the next token
    cdf = np.cumsum(weights)
    assert drawn.tolist() == [int(np.searchsorted(cdf, u, side="right")) for u in uniforms]


def test_draw_never_picks_a_token_of_probability_zero():
    probabilities = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 0.5]])
    assert draw(probabilities, fixed_uniforms([0.0, 0.0])).tolist() == [2, 1]
    assert draw(probabilities, fixed_uniforms([0.999999, 0.5])).tolist() == [2, 3]


def test_draw_scales_the_uniform_by_the_total_mass():
    # unnormalised weights 1, 1, 2: cdf 1, 2, 4, u = 0.5 * 4 = 2 -> the third token
    assert draw(np.array([[1.0, 1.0, 2.0]]), fixed_uniforms([0.5])).tolist() == [2]


def test_draw_takes_one_uniform_per_row_from_its_batch_rows_generator():
    probabilities = softmax(np.random.default_rng(1).normal(size=(2, 3, 5)))
    rngs = row_generators(7, 2)
    drawn = draw(probabilities, rngs)
    assert drawn.shape == (2, 3)
    for b, rng in enumerate(rngs):
        reference = np.random.default_rng([7, b]).random(4)
        assert rng.random() == reference[3]  # batch row b consumed its three rows' numbers, from its own stream
        expected = [
            int(np.searchsorted(np.cumsum(p), u * p.sum(), side="right"))
            for p, u in zip(probabilities[b], reference[:3], strict=True)
        ]
        assert drawn[b].tolist() == expected

    many = draw(np.tile([0.1, 0.2, 0.3, 0.4], (40_000, 1)), row_generators(0, 40_000))
    # a frequency of n draws has standard deviation sqrt(p (1 - p) / n) <= 0.0025 here: within 4 of them
    frequencies = np.bincount(many, minlength=4) / len(many)
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4], rtol=0, atol=4 * np.sqrt(0.25 / len(many)))


def test_a_rows_draws_do_not_depend_on_the_rows_batched_with_it():
    probabilities = softmax(np.random.default_rng(2).normal(size=(5, 4, 9)))
    together = draw(probabilities, row_generators(3, 2) + row_generators(11, 3))
    assert together[:2].tolist() == draw(probabilities[:2], row_generators(3, 2)).tolist()
    assert together[2:].tolist() == draw(probabilities[2:], row_generators(11, 3)).tolist()
    assert row_generators(3, 2, start=1)[0].random() == row_generators(3, 2)[1].random()
    with pytest.raises(ValueError, match="one generator per batch row"):
        draw(probabilities, row_generators(3, 4))


# -- batching -------------------------------------------------------------------------------


def test_batches_cover_every_row_once():
    assert list(batches(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert list(batches(0, 3)) == []


def test_run_batched_calls_the_graph_per_chunk_and_concatenates():
    calls = []

    def components(name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        calls.append((name, len(inputs["x"])))
        return {"y": inputs["x"] * 2 + inputs["z"]}

    x, z = np.arange(10.0), np.ones(10)
    np.testing.assert_array_equal(run_batched(components, "double", "y", 4, x=x, z=z), x * 2 + 1)
    assert calls == [("double", 4), ("double", 4), ("double", 2)]


# -- images ---------------------------------------------------------------------------------


def test_one_suffix_list_for_image_folders_and_sampling_inputs(tmp_path):
    import zoo.data.images

    assert zoo.data.images.IMAGE_SUFFIXES is IMAGE_SUFFIXES
    assert {".png", ".jpg", ".jpeg", ".webp", ".pgm"} <= IMAGE_SUFFIXES
    for name in ("b.PGM", "a.png", "c.txt", ".hidden.png", "d.jpeg"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "folder.png").mkdir()
    assert [path.name for path in image_files(tmp_path)] == ["a.png", "b.PGM", "d.jpeg"]


@pytest.mark.parametrize(
    ("size", "box"),
    [
        ((10, 6), (2.0, 0.0, 8.0, 6.0)),
        ((6, 10), (0.0, 2.0, 6.0, 8.0)),
        ((5, 8), (0.0, 1.5, 5.0, 6.5)),
        ((7, 7), (0.0, 0.0, 7.0, 7.0)),
    ],
)
def test_center_crop_box_is_the_largest_centred_square(size, box):
    assert center_crop_box(*size) == box


def test_square_resize_crops_the_sides_away():
    pixels = np.zeros((20, 60, 3), dtype=np.uint8)  # the centred square is columns 20..40
    pixels[:, :10] = (255, 0, 0)  # bands far enough outside it for the bicubic filter's reach
    pixels[:, 50:] = (0, 0, 255)
    pixels[:, 10:50] = (0, 255, 0)
    square = square_resize(Image.fromarray(pixels), 8)
    assert square.shape == (8, 8, 3)
    assert square.dtype == np.uint8
    assert square[..., 1].min() >= 254
    assert square[..., [0, 2]].max() <= 1


def test_read_square_makes_rgb_upright_and_composites_alpha_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (12, 6), (0, 0, 0, 0)).save(path)
    square = read_square(path, 4)
    assert square.shape == (4, 4, 3)
    assert (square == 255).all()
    assert read_rgb(path).mode == "RGB"


def test_reading_a_missing_or_bad_file_is_one_data_error_naming_the_role(tmp_path):
    with pytest.raises(DataError, match=r"^--style .*missing\.png: no such file$"):
        read_square(tmp_path / "missing.png", 4, "--style")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(DataError, match=r"^--image .*bad\.png: not a readable image"):
        read_rgb(bad)


def test_to_model_input_is_channels_first_in_minus_one_to_one():
    images = np.zeros((2, 3, 5, 3), dtype=np.uint8)
    images[0, 0, 0] = 255
    values = to_model_input(images)
    assert values.shape == (2, 3, 3, 5)
    assert values.dtype == np.float32
    assert values.flags.c_contiguous
    assert values[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert values.min() == -1.0


def test_the_runtime_toolbox_and_zoo_data_import_no_torch():
    """Imported and used with torch unimportable: each call below would fail if it reached torch."""
    code = BLOCK_TORCH + textwrap.dedent("""
        import numpy as np
        import zoo.data, zoo.data.images, zoo.runtime.images, zoo.runtime.sampling
        values = zoo.runtime.images.to_model_input(np.full((1, 2, 2, 3), 255, np.uint8))
        probabilities = zoo.runtime.sampling.softmax(np.zeros((1, 4)))
        drawn = zoo.runtime.sampling.draw(probabilities, zoo.runtime.sampling.row_generators(0, 1))
        assert "torch" not in sys.modules, "torch imported"
        print(values.min(), probabilities.sum(), drawn.shape)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1.0", "1.0", "(1,)"]


def test_zoo_data_names_resolve_on_first_use():
    import zoo.data
    import zoo.data.catalog  # imports the zoo.data.digits submodule, which must not shadow the function
    from zoo.data import Digits, digits, shapes

    assert callable(digits)
    assert callable(shapes)
    assert digits.__module__ == "zoo.data.digits"
    assert zoo.data.Digits is Digits
    with pytest.raises(AttributeError):
        zoo.data.no_such_name  # noqa: B018


@pytest.mark.parametrize(("before", "after"), [(None, "1"), ("0", "0")])
def test_sessions_turn_onnxruntime_telemetry_off_unless_told(monkeypatch, before, after):
    from zoo.runtime.sessions import TELEMETRY_VARIABLE, session_options

    if before is None:
        monkeypatch.delenv(TELEMETRY_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(TELEMETRY_VARIABLE, before)
    session_options()
    assert os.environ[TELEMETRY_VARIABLE] == after
