"""Stage 5 outputs, from the typed results (:mod:`mia_torch.report.types`): ``results.json``,
TensorBoard, figures, the printed summary, per-record CSVs, sweep summaries.

Submodules are imported on use (``from mia_torch.report import plots``) so that reading
or writing JSON does not pull in matplotlib or TensorBoard.
"""
import importlib
from typing import Any

__all__ = ["json_file", "pictures", "plots", "table", "tensorboard", "types", "vulnerability"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
