"""Datasets as device-resident tensors, device-side augmentation and query views."""

from mia_torch.data.augment import QUERY_NAMES, apply_queries, apply_query, parse_queries, random_crop_flip
from mia_torch.data.datasets import (
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    load_dataset,
    normalize,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "QUERY_NAMES",
    "Dataset",
    "DatasetNotFoundError",
    "apply_queries",
    "apply_query",
    "load_dataset",
    "normalize",
    "parse_queries",
    "random_crop_flip",
    "register_dataset",
]
