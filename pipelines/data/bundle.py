"""The data layer's shared types: split names, the bundle a method trains on, its error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import ray.data


SPLITS = ("source_train", "source_val", "target_train", "target_val", "target_test")
SHIFT_OPS = ("thicken", "rotate", "noise", "invert", "blur")
LABELLED_SPLITS = ("source_train", "source_val", "target_val", "target_test")
IMAGE_SHAPE_KEY = b"trainlab.image_shape"
FEATURE_COLUMNS = ("image", "features")
DOMAINS = ("source", "target")
SPLIT_VALUES = ("train", "val", "test")


class DataValidationError(ValueError):
    """A data file or data argument is unusable. One message naming the file and the column."""


@dataclass(frozen=True)
class DataBundle:
    """What every method's trainer receives: Ray Datasets per split plus the facts about them."""

    datasets: dict[str, "ray.data.Dataset"]  # keys = SPLITS; target_train rows have only "x"
    input_shape: tuple[int, ...]              # (C, H, W) for images, (D,) for feature vectors
    num_classes: int
    sizes: dict[str, int]                     # rows per split
    name: str                                 # MLflow `dataset` tag
    source: str = ""                          # where the rows come from (a path, a URI, trainlab-embedded:<name>)
    digest: str = ""                          # of the rows as read (content or file identity); "" = unknown
