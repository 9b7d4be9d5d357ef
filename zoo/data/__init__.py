"""Data sets: embedded ones (nothing is downloaded) and a user's image folders and caption sets.

Every data set yields dicts with "image" a float tensor (3, H, W) in [-1, 1], plus "label"
(int) or "caption" (str) where it has them, and batches with torch's default collate.
"""

from zoo.data.base import SPLITS, Subset, split_indices
from zoo.data.catalog import BUILTIN_NAMES, load_images
from zoo.data.classifier import DigitsClassifier
from zoo.data.digits import Digits, digits
from zoo.data.embedded import RandomCrops, photos, textures
from zoo.data.folders import CaptionSet, ImageFolder, caption_set, image_folder
from zoo.data.shapes import Shapes, shapes, shapes_vocabulary

__all__ = [
    "BUILTIN_NAMES", "SPLITS", "CaptionSet", "Digits", "DigitsClassifier", "ImageFolder", "RandomCrops",
    "Shapes", "Subset", "caption_set", "digits", "image_folder", "load_images", "photos", "shapes",
    "shapes_vocabulary", "split_indices", "textures",
]
