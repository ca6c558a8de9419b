"""Shared pytest setup: skip `gpu` tests without CUDA; one CPU thread per test process.

Tiny models gain nothing from intra-op threads, and on a loaded machine extra threads
slow them down many times over; parallelism comes from pytest-xdist workers instead.
"""
import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
