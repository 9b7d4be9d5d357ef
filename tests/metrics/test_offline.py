"""zoo.metrics without torch-fidelity: the ADM format, the weights file's resolution and
check, and the resumable sample folder. These run in the main environment."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoo.errors import DataError
from zoo.metrics import samples as sample_folder, weights
from zoo.metrics.adm import ReferenceBatch, read_reference_batch, write_reference_batch
from zoo.metrics.samples import CHUNK, SampleFolderError, draw_samples, sample_path


def test_adm_reference_batch_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6))
    batch = ReferenceBatch(
        mu=features.mean(0),
        sigma=np.cov(features, rowvar=False),
        images=rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),
    )
    write_reference_batch(tmp_path / "ref.npz", batch)
    read = read_reference_batch(tmp_path / "ref.npz")
    np.testing.assert_array_equal(read.images, batch.images)
    np.testing.assert_array_equal(read.mu, batch.mu)
    np.testing.assert_array_equal(read.sigma, batch.sigma)

    # The published files name the arrays arr_0, mu, sigma (float32 statistics in some).
    np.savez(tmp_path / "stats.npz", mu=batch.mu.astype(np.float32), sigma=batch.sigma.astype(np.float32))
    stats = read_reference_batch(tmp_path / "stats.npz")
    assert stats.images is None and stats.mu.dtype == np.float64 and stats.sigma.shape == (6, 6)


def test_adm_reference_batch_without_statistics_or_images_is_refused(tmp_path):
    np.savez(tmp_path / "odd.npz", mu=np.zeros(4))
    with pytest.raises(DataError, match="neither mu and sigma nor arr_0"):
        read_reference_batch(tmp_path / "odd.npz")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match="uint8"):
        read_reference_batch(tmp_path / "float.npz")


def test_missing_weights_offline_is_one_line_naming_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(weights.ENV, raising=False)
    monkeypatch.setattr(weights, "URL", "http://127.0.0.1:9/weights-inception-2015-12-05-6726825d.pth")  # refused
    with pytest.raises(weights.InceptionWeightsError) as caught:
        weights.resolve_weights()
    message = str(caught.value)
    assert "\n" not in message and "--inception-weights" in message and weights.ENV in message
    assert not list((tmp_path / "torch").rglob("*.part"))  # no half-downloaded file left behind

    monkeypatch.setenv(weights.ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(weights.InceptionWeightsError, match=f"\\${weights.ENV} .*nowhere.pth is not a file"):
        weights.resolve_weights()


def test_weights_file_is_checked_against_the_published_hash_prefix(tmp_path, monkeypatch):
    wrong = tmp_path / weights.FILE_NAME
    wrong.write_bytes(b"not the inception weights")
    with pytest.raises(weights.InceptionWeightsError, match="not the published Inception weights"):
        weights.resolve_weights(wrong)
    path, digest = weights.resolve_weights(wrong, check=False)
    assert path == wrong and len(digest) == 64
    monkeypatch.setattr(weights, "SHA256_PREFIX", digest[:8])  # as if it were the published file
    assert weights.resolve_weights(wrong) == (wrong, digest)


class CountingSampler:
    """Draws `count` images whose pixels encode (seed, position): a redraw would be visible."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, first: int, count: int, seed: int) -> np.ndarray:
        self.calls.append((first, count, seed))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt  # the evaluation is killed while drawing this chunk
        images = np.zeros((count, 4, 4, 3), np.uint8)
        images[:, 0, 0, 0] = seed
        images[:, 0, 0, 1] = np.arange(count)
        return images


IDENTITY = {"model": "toy", "weights": "abc", "options": {"cfg": 1.5}}


def test_an_interrupted_sample_set_resumes_without_drawing_again(tmp_path):
    count = 3 * CHUNK + 7  # four chunks, the last one partly kept
    killed = CountingSampler(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        draw_samples(killed, tmp_path / "kept", count, seed=5, identity=IDENTITY)
    assert len(killed.calls) == 3 and sample_path(tmp_path / "kept", 2 * CHUNK - 1).is_file()

    resumed = CountingSampler()
    assert draw_samples(resumed, tmp_path / "kept", count, seed=5, identity=IDENTITY) == 2
    assert [first for first, _, _ in resumed.calls] == [2 * CHUNK, 3 * CHUNK]
    again = CountingSampler()
    assert draw_samples(again, tmp_path / "kept", count, seed=5, identity=IDENTITY) == 0 and not again.calls

    whole = CountingSampler()
    draw_samples(whole, tmp_path / "whole", count, seed=5, identity=IDENTITY)
    for index in (0, CHUNK, 3 * CHUNK + 6):  # every image as an uninterrupted run drew it
        kept, fresh = (np.asarray(Image.open(sample_path(tmp_path / d, index))) for d in ("kept", "whole"))
        np.testing.assert_array_equal(kept, fresh)
    assert not sample_path(tmp_path / "whole", count).exists()  # the last chunk's extra images are not kept

    more = CountingSampler()  # a larger N draws only the chunks it adds
    draw_samples(more, tmp_path / "whole", count + CHUNK, seed=5, identity=IDENTITY)
    assert [first for first, _, _ in more.calls] == [3 * CHUNK, 4 * CHUNK]


def test_a_sample_folder_of_something_else_is_refused(tmp_path):
    draw_samples(CountingSampler(), tmp_path / "kept", 3, seed=0, identity=IDENTITY)
    other = {**IDENTITY, "options": {"cfg": 4.0}}
    with pytest.raises(SampleFolderError, match="other options"):
        draw_samples(CountingSampler(), tmp_path / "kept", 3, seed=0, identity=other)
    with pytest.raises(SampleFolderError, match="other seed"):
        draw_samples(CountingSampler(), tmp_path / "kept", 3, seed=1, identity=IDENTITY)
    (tmp_path / "foreign").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "foreign" / "photo.png")
    with pytest.raises(SampleFolderError, match="did not draw"):
        draw_samples(CountingSampler(), tmp_path / "foreign", 3, seed=0, identity=IDENTITY)


def test_sampler_of_the_wrong_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not"):
        draw_samples(lambda first, count, seed: np.zeros((count - 1, 4, 4, 3), np.uint8), tmp_path, 2, 0, IDENTITY)
    assert sample_folder.sample_files(tmp_path, 2)[0].name == "000000.png"


def test_metric_sample_options_are_class_balanced():
    from zoo.registry import get_registry

    plugin = get_registry().get("var")
    config = plugin.Config.model_validate({**plugin.presets["digits"]})
    options = plugin.metric_sample_options(config, 95, CHUNK, 3)
    assert options.n == 1 and options.seed == 3 and options.cfg == 1.5
    assert options.classes[:6] == [5, 6, 7, 8, 9, 0]  # image i is of class i mod 10
    counts = np.bincount(
        [c for first in range(0, 100, CHUNK) for c in plugin.metric_sample_options(config, first, CHUNK, 0).classes]
    )
    assert counts.tolist() == [10] * 10
