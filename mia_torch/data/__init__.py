"""Datasets as device-resident tensors, device-side augmentation and query views.

Importing this package (or any module in it) registers every built-in dataset loader.
"""

# The loader modules register their datasets when imported.
from mia_torch.data import builtin, npz, tabular, torchvision_sets  # noqa: F401
from mia_torch.data.queries import (
    DEFAULT_QUERIES,
    QUERY_NAMES,
    apply_queries,
    apply_query,
    parse_queries,
)
from mia_torch.data.augment import random_crop_flip
from mia_torch.data.datasets import (
    DATASET_KINDS,
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    dataset_kind,
    load_dataset,
    normalize,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "DATASET_KINDS",
    "DEFAULT_QUERIES",
    "QUERY_NAMES",
    "Dataset",
    "DatasetNotFoundError",
    "apply_queries",
    "apply_query",
    "dataset_kind",
    "load_dataset",
    "normalize",
    "parse_queries",
    "random_crop_flip",
    "register_dataset",
]
