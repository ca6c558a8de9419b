"""Query views: the fixed transformations under which trained models are queried for membership signals.

Training augmentation, which is random, lives in :mod:`mia_torch.data.queries`.

Query grammar (:data:`QUERY_NAMES`):

- ``identity``: the image itself;
- ``flip``: horizontal mirror (last axis reversed);
- ``shift_<dx>_<dy>``: integer translation with zero fill, ``dx`` to the right and ``dy``
  down (negative values move left / up): ``out[..., i, j] = x[..., i - dy, j - dx]``,
  e.g. ``shift_1_0``, ``shift_-1_0``, ``shift_0_-2``;
- ``flip_shift_<dx>_<dy>``: the flip first, then the shift.

The values are in the space the images are stored in (normalised), so zero fill is the
dataset mean, as a model sees padding.

Every view but ``identity`` is an image view. Tabular records are queried as they are
(``identity``): a view of a record must be the same for every model, and a perturbation
that is not part of how the models were trained adds little signal on such data.
:data:`DEFAULT_QUERIES` gives the views used when the config leaves ``queries`` unset.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_QUERIES",
    "QUERY_NAMES",
    "apply_queries",
    "apply_query",
    "check_views_fit",
    "parse_queries",
]

#: The forms a query name can take; ``<dx>``/``<dy>`` are integers (pixels, may be negative).
QUERY_NAMES: tuple[str, ...] = ("identity", "flip", "shift_<dx>_<dy>", "flip_shift_<dx>_<dy>")

#: The query views of a dataset kind (``Dataset.kind``) when ``queries`` is null: images are
#: queried as themselves and mirrored (the two queries of LiRA), tabular records as themselves.
DEFAULT_QUERIES: dict[str, tuple[str, ...]] = {"image": ("identity", "flip"), "tabular": ("identity",)}

_QUERY_RE = re.compile(r"^(?:(identity)|(flip)|(flip_)?shift_(-?\d+)_(-?\d+))$")


def _parse(name: str) -> tuple[bool, int, int]:
    """``(flip, dx, dy)`` of a query name; raises ``ValueError`` for anything else."""
    m = _QUERY_RE.match(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(
            f"invalid query {name!r} in config key `queries`; valid forms: {', '.join(QUERY_NAMES)} "
            f"with integer pixel shifts, e.g. identity, flip, shift_1_0, shift_-1_0, flip_shift_0_1"
        )
    if m.group(1):
        return False, 0, 0
    if m.group(2):
        return True, 0, 0
    return bool(m.group(3)), int(m.group(4)), int(m.group(5))


def _canonical(flip: bool, dx: int, dy: int) -> str:
    if dx == 0 and dy == 0:
        return "flip" if flip else "identity"
    return f"{'flip_' if flip else ''}shift_{dx}_{dy}"


def parse_queries(names: Sequence[str] | None, *, kind: str = "image") -> list[str]:
    """Validate query names (config key ``queries``) for data of ``kind``; return them canonically spelled.

    ``names=None`` gives the default views of ``kind`` (:data:`DEFAULT_QUERIES`). Raises
    ``ValueError`` for an empty list, a name outside :data:`QUERY_NAMES`, two names for the
    same view (``shift_0_0`` is ``identity``, ``flip_shift_0_0`` is ``flip``, ``shift_01_0``
    is ``shift_1_0``), or an image view on ``"tabular"`` data. Order is kept: it is the
    query axis of the signals.
    """
    if kind not in DEFAULT_QUERIES:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {sorted(DEFAULT_QUERIES)}")
    if names is None:
        return list(DEFAULT_QUERIES[kind])
    if isinstance(names, str):
        raise ValueError(f"config key `queries` must be a list of query names, got the string {names!r}")
    out: list[str] = []
    for name in names:
        canon = _canonical(*_parse(name))
        if canon in out:
            raise ValueError(f"config key `queries` lists the view {canon!r} twice ({name!r})")
        out.append(canon)
    if not out:
        raise ValueError(f"config key `queries` is empty; give at least one of: {', '.join(QUERY_NAMES)}")
    image_views = [q for q in out if q not in DEFAULT_QUERIES["tabular"]]
    if kind == "tabular" and image_views:
        raise ValueError(
            f"config key `queries` asks for image view(s) {', '.join(image_views)}, but the dataset is tabular: "
            f"use queries=[identity], or leave `queries` unset (null) for the dataset's default"
        )
    return out


def check_views_fit(names: Sequence[str], input_shape: Sequence[int]) -> None:
    """Refuse a view that leaves nothing of an image of ``input_shape`` (``(C, H, W)``): a shift of at least the
    image's width or height gives a blank image, identical for every record and model, whose signal measures
    nothing. Records that are not images (``(F,)``) are only queried as themselves."""
    if len(input_shape) < 2:
        return
    height, width = int(input_shape[-2]), int(input_shape[-1])
    shifts = {name: _parse(name)[1:] for name in names}
    blank = [name for name, (dx, dy) in shifts.items() if abs(dx) >= width or abs(dy) >= height]
    if blank:
        raise ValueError(
            f"config key `queries`: {', '.join(blank)} shift(s) {height}x{width} images by at least their size, so "
            f"nothing of the image is left (every such query is a blank image, the same for every record): use "
            f"shifts with |dx| < {width} and |dy| < {height}, e.g. shift_1_0"
        )


def _shift(x: Tensor, dx: int, dy: int) -> Tensor:
    """Translate the last two axes by ``dx`` (right) and ``dy`` (down), zero fill."""
    if dx == 0 and dy == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


def apply_query(x: Tensor, name: str) -> Tensor:
    """The deterministic view ``name`` (see :data:`QUERY_NAMES`) of images ``[..., H, W]``.

    ``identity`` returns ``x`` itself; other views return new tensors of the same shape,
    dtype and device. Shifts fill with zeros (the mean of normalised data); a shift of
    at least the image size gives all zeros.
    """
    flip, dx, dy = _parse(name)
    out = x.flip(-1) if flip else x
    return _shift(out, dx, dy)


def apply_queries(x: Tensor, names: Sequence[str]) -> Tensor:
    """All views of ``x`` stacked on a new leading axis: ``[len(names), *x.shape]``."""
    return torch.stack([apply_query(x, n) for n in names])
