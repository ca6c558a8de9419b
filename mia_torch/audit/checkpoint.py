"""Load the model a user wants audited: a ``state_dict`` file or a ``torch.export`` program.

Nothing in a checkpoint runs: state dicts load with ``torch.load(weights_only=True)``, and
``.pt2`` programs are refused when they carry pickled Python objects (custom or opaque
constants) and otherwise load with every ``torch.load`` inside forced to
``weights_only=True`` (``torch.export.load`` would fall back to full unpickling).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["CheckpointError", "ExportedModel", "load_checkpoint_model"]

#: Keys under which training frameworks commonly nest the weights (Lightning, plain scripts).
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
#: Constants of a .pt2 archive that are pickled Python objects rather than tensors.
_PICKLED_CONSTANT_PREFIXES = ("custom_obj_", "opaque_obj_")
_LISTED = 8


class CheckpointError(ValueError):
    """The checkpoint cannot be used as the audited model (the message names the file and what to do)."""


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every ``torch.load`` in the block to ``weights_only=True`` (PyTorch's own switch)."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def _refused(path: Path, err: BaseException, key: str) -> CheckpointError:
    return CheckpointError(
        f"{path} ({key}) holds pickled Python objects, not only tensors, so it was refused without "
        f"running anything ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Save the weights with "
        "`torch.save(model.state_dict(), path)` or the program with `torch.export.save`."
    )


def _tensor_dict(obj: object) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
        return dict(obj)
    return None


def read_state_dict(path: Path, *, key: str = "audit.checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``-d state dict (also nested under ``state_dict``/``model``; a
    ``module.`` prefix from DataParallel is removed). ``key`` names the config key in errors."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refused(path, err, key) from err
    except Exception as err:  # noqa: BLE001 - torch.load fails on other files in many ways (IndexError on text)
        raise CheckpointError(f"{path} ({key}) is not a readable PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err)[:200]}): save it with `torch.save(model.state_dict(), path)`") from err
    state = _tensor_dict(obj)
    if state is None and isinstance(obj, Mapping):
        state = next((s for k in _NESTED_KEYS if (s := _tensor_dict(obj.get(k))) is not None), None)
    if state is None:
        raise CheckpointError(
            f"{path} ({key}) is not a state dict of tensors (got {type(obj).__name__}): save it with "
            "`torch.save(model.state_dict(), path)`"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _mismatch_report(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    lines = []
    for title, items in (("missing from the checkpoint", missing), ("not in the model", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - _LISTED} more)" if len(items) > _LISTED else ""
            lines.append(f"{title}: {', '.join(items[:_LISTED])}{more}")
    return lines


def load_state_dict_model(path: Path, build: Callable[[], nn.Module], *, key: str = "audit.checkpoint") -> nn.Module:
    """Build the configured architecture and load ``path`` into it, listing every mismatching key."""
    state = read_state_dict(path, key=key)
    model = build()
    problems = _mismatch_report(model, state)
    if problems:
        raise CheckpointError(
            f"{path} ({key}) does not fit the configured architecture (config group `model`): "
            + "; ".join(problems) + ". Choose the `model` (and its options) the checkpoint was trained with."
        )
    model.load_state_dict(state)
    return model.eval()


class ExportedModel(nn.Module):
    """A ``torch.export`` program as an ``nn.Module`` the pipeline can query.

    Exported programs do not support ``eval()``/``train()`` (their mode was fixed at export),
    so those are no-ops here. A program exported with a static batch size is fed in chunks of
    exactly that size (the last one padded by repeating its final row, padding dropped).
    """

    def __init__(self, module: nn.Module, batch_size: int | None) -> None:
        super().__init__()
        self.program = module
        self.batch_size = batch_size

    def train(self, mode: bool = True) -> "ExportedModel":  # noqa: D102 - mode is fixed at export
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_size is None or len(x) == self.batch_size:
            return self.program(x)
        outputs = []
        for chunk in torch.split(x, self.batch_size):
            short = self.batch_size - len(chunk)
            if short:
                chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
            outputs.append(self.program(chunk)[: self.batch_size - short])
        return torch.cat(outputs)


def _static_batch_size(module: nn.Module) -> int | None:
    for node in module.graph.nodes:  # type: ignore[union-attr]
        if node.op == "placeholder":
            value = node.meta.get("val")
            size = None if value is None else value.shape[0]
            return int(size) if isinstance(size, int) else None
    return None


def load_exported_model(path: Path, *, key: str = "audit.checkpoint") -> ExportedModel:
    """Load a ``.pt2`` program saved with ``torch.export.save``, refusing pickled constants."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path} ({key}) is not a torch.export archive (.pt2): {err}") from err
    pickled = [n for n in names if Path(n).name.startswith(_PICKLED_CONSTANT_PREFIXES)]
    if pickled:
        raise CheckpointError(
            f"{path} ({key}) carries pickled Python objects ({', '.join(pickled[:_LISTED])}): refused "
            "without loading them. Export a model whose constants are tensors only."
        )
    try:
        with _weights_only_loads():
            program = torch.export.load(path)
    except pickle.UnpicklingError as err:
        raise _refused(path, err, key) from err
    except Exception as err:  # noqa: BLE001 - torch.export raises many types; report with the path
        raise CheckpointError(f"{path} ({key}) could not be loaded as a torch.export program: {err}") from err
    module = program.module()
    return ExportedModel(module, _static_batch_size(module))


def load_checkpoint_model(path: str | os.PathLike, build: Callable[[], nn.Module], *,
                          key: str = "audit.checkpoint") -> nn.Module:
    """The model from ``path``: a ``.pt2`` export program, else a state dict for ``build()``.

    ``build`` constructs the configured architecture (config group ``model``); it is only
    called for state dicts. Raises :class:`CheckpointError` naming the file, the config ``key``
    that gave it (``audit.checkpoint``, ``forget.checkpoint``) and the problem.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"{key}={str(path)!r} is a directory: give the path of your model file in it")
    if not path.is_file():
        raise CheckpointError(f"{key}={str(path)!r} does not exist: give the path of your model file")
    if path.suffix == ".pt2":
        return load_exported_model(path, key=key)
    return load_state_dict_model(path, build, key=key)
