"""Datasets as device-resident tensors, their loaders (what a ``dataset`` config builds),
device-side augmentation and query views."""

from mia_torch.data.augment import random_crop_flip
from mia_torch.data.datasets import DATASET_KINDS, Dataset, DatasetNotFoundError, normalize
from mia_torch.data.loader import DatasetLoader, load_dataset
from mia_torch.data.queries import (
    DEFAULT_QUERIES,
    QUERY_NAMES,
    apply_queries,
    apply_query,
    parse_queries,
)

__all__ = [
    "DATASET_KINDS",
    "DEFAULT_QUERIES",
    "QUERY_NAMES",
    "Dataset",
    "DatasetLoader",
    "DatasetNotFoundError",
    "apply_queries",
    "apply_query",
    "load_dataset",
    "normalize",
    "parse_queries",
    "random_crop_flip",
]
