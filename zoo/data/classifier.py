"""A digit classifier trained on the real digits, to judge whether generated samples look like digits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zoo.data.digits import DIGITS_MAX_INTENSITY, digits, digits_split, real_digits

CONFIDENT = 0.8  # a sample the classifier gives at least this probability counts as a clear digit


def images_to_digit_features(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] of any size -> (N, 64) on sklearn's 0..16 intensity scale.

    Area averaging down to 8x8 undoes the upscaling the way sklearn made the digits: each
    value is the amount of ink in one block of the image.
    """
    pixels = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    gray = pixels.detach().float().cpu().mean(dim=1, keepdim=True)  # (N, 1, H, W)
    blocks = F.interpolate(gray, size=(8, 8), mode="area")  # (N, 1, 8, 8)
    intensity = (blocks.clamp(-1.0, 1.0) + 1.0) / 2.0 * DIGITS_MAX_INTENSITY
    return intensity.reshape(len(intensity), 64).numpy().astype(np.float64)


class DigitsClassifier:
    """An RBF support vector machine fitted on the train split of the real digits (~1 s).

    Class probabilities come from sigmoid calibration on held-out folds of the train split.
    An SVM alone is confidently wrong far from its data (a blank image scores 0.99 for one
    class), so probabilities are shrunk toward uniform by how far an image is from every
    real digit: `digit_likeness` is 1 within the nearest-neighbour distances real digits have
    to each other and falls linearly to 0 at 1.5 times that (blank, noise, photos, shapes).
    """

    def __init__(self) -> None:
        from scipy.spatial import cKDTree
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        images, labels = real_digits()
        train = digits_split("train")
        features = images[train].reshape(len(train), 64)
        # gamma and C are the classic settings for these 64 features on the 0..16 scale.
        self.model = CalibratedClassifierCV(SVC(gamma=0.001, C=10.0), ensemble=False)
        self.model.fit(features, labels[train])
        self.train_features = cKDTree(features)
        distances, _ = self.train_features.query(features, k=2)  # (N, 2): each image itself, then its nearest other
        distance_to_other_digits = np.asarray(distances)[:, 1]
        self.typical_distance = float(np.percentile(distance_to_other_digits, 99))

    def digit_likeness(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N,) in [0, 1]: 1 for images as close to a real digit as real digits are to each other."""
        return self._likeness(images_to_digit_features(images))

    def predict_proba(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N, 3, H, W) in [-1, 1] -> (N, 10) class probabilities (rows sum to 1)."""
        features = images_to_digit_features(images)
        likeness = self._likeness(features)[:, None]
        return likeness * self.model.predict_proba(features) + (1.0 - likeness) / 10.0

    def _likeness(self, features: np.ndarray) -> np.ndarray:
        distance = self.train_features.query(features)[0]
        return np.clip((1.5 * self.typical_distance - distance) / (0.5 * self.typical_distance), 0.0, 1.0)

    def predict(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)

    def score(self, images: torch.Tensor | np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
        """Metrics for generated digits: how clear they are, how varied, and (with the
        labels they were generated for) whether they show the asked-for digit."""
        probabilities = self.predict_proba(images)
        top = probabilities.max(axis=1)
        predicted = probabilities.argmax(axis=1)
        metrics = {
            "digit_likeness": float(self.digit_likeness(images).mean()),
            "digit_confidence": float(top.mean()),
            "confident_fraction": float((top >= CONFIDENT).mean()),
            "classes_covered": float(len(np.unique(predicted[top >= CONFIDENT]))),
        }
        if labels is not None:
            metrics["class_accuracy"] = float((predicted == np.asarray(labels)).mean())
        return metrics

    def accuracy_on_real_test(self, size: int = 32) -> float:
        """Accuracy on the held-out real digits, upscaled to `size` as a model would see them."""
        return self.score(*_real_test_batch(size))["class_accuracy"]


def _real_test_batch(size: int) -> tuple[torch.Tensor, np.ndarray]:
    test = digits(size, split="test")
    return test.images.expand(-1, 3, -1, -1), test.labels.numpy()
