#!/usr/bin/env python3
"""Decode a CIFAR-10 JPEG container into the arrays ``dataset=npz`` reads.

The container is an ``.npz`` holding each split's images as concatenated JPEG bytes:
``{train,test}_jpeg`` (uint8), ``{train,test}_offsets`` (int64, ``n + 1`` entries: image
``i`` is ``jpeg[offsets[i]:offsets[i + 1]]``), ``{train,test}_labels`` (int64) and
``classes``. The output ``.npz`` holds ``x_train`` uint8 ``[N, H, W, 3]``, ``y_train``,
``x_test``, ``y_test`` and ``classes``; it is written to a temporary name and renamed, so
an interrupted decode never leaves a truncated file behind.

    python scripts/decode_cifar10_jpeg.py CONTAINER.npz OUT.npz
    python scripts/decode_cifar10_jpeg.py --synthetic 512,128 CONTAINER.npz   # a small made-up container

``--synthetic TRAIN,TEST`` writes a container of that many 32x32 images instead (seeded
class prototypes plus noise, JPEG-encoded), for tests and CPU smoke runs. Needs only
numpy and Pillow.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "test")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _decode_one(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_split(container, split: str, *, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, H, W, 3]`` and labels ``int64 [N]`` of one split of an open container."""
    keys = [f"{split}_jpeg", f"{split}_offsets", f"{split}_labels"]
    missing = [k for k in keys if k not in container.files]
    if missing:
        raise ValueError(f"{source} is not a CIFAR-10 JPEG container: it lacks {missing}")
    blob, offsets, labels = (container[k] for k in keys)
    if len(offsets) != len(labels) + 1 or offsets[0] != 0 or offsets[-1] != len(blob):
        raise ValueError(f"{source}: {split}_offsets do not index {split}_jpeg ({len(labels)} labels)")
    chunks = [blob[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(labels))]
    # Pillow releases the GIL while decoding, so threads decode in parallel
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_decode_one, chunks, chunksize=256))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{source}: {split} images differ in size: {sorted(shapes)}")
    return np.stack(images), labels.astype(np.int64)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file next to ``path``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def decode(source: Path, out: Path) -> dict[str, tuple[int, ...]]:
    """Decode container ``source`` into ``out`` (``x_train, y_train, x_test, y_test, classes``); returns shapes."""
    if not source.is_file():
        raise FileNotFoundError(f"CIFAR-10 JPEG container {source} not found")
    with np.load(source, allow_pickle=False) as container:
        arrays: dict[str, np.ndarray] = {}
        for split in SPLITS:
            arrays[f"x_{split}"], arrays[f"y_{split}"] = decode_split(container, split, source=source)
        classes = container["classes"] if "classes" in container.files else np.array(CLASSES)
    arrays["classes"] = np.asarray([str(c) for c in classes])
    _save_npz(out, arrays)
    return {k: v.shape for k, v in arrays.items()}


def write_synthetic(path: Path, *, num_train: int, num_test: int, seed: int = 0, quality: int = 75) -> None:
    """A container in the same format with ``num_train + num_test`` learnable 32x32 images.

    Each class has a smooth random colour prototype; an image is its prototype plus
    noise. The labels cycle through the ten classes, so every class is present.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(len(CLASSES), 4, 4, 3))
    prototypes = np.kron(coarse, np.ones((8, 8, 1)))  # 32x32x3, blocky but learnable
    arrays: dict[str, np.ndarray] = {"classes": np.array(CLASSES)}
    for split, n in (("train", num_train), ("test", num_test)):
        labels = np.arange(n) % len(CLASSES)
        images = prototypes[labels] + 0.8 * rng.normal(size=(n, 32, 32, 3))
        pixels = np.clip(128 + 48 * images, 0, 255).astype(np.uint8)
        encoded = []
        for image in pixels:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=quality)
            encoded.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(encoded) if encoded else np.zeros(0, np.uint8)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    _save_npz(path, arrays)


def _sizes(text: str) -> tuple[int, int]:
    try:
        train, test = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TRAIN,TEST image counts, e.g. 512,128; got {text!r}") from None
    if train < 1 or test < 1:
        raise argparse.ArgumentTypeError(f"image counts must be >= 1, got {text!r}")
    return train, test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="CONTAINER OUT (decode) or CONTAINER (--synthetic)")
    parser.add_argument("--synthetic", type=_sizes, metavar="TRAIN,TEST", help="write a small made-up container")
    args = parser.parse_args(argv)
    if args.synthetic:
        if len(args.paths) != 1:
            parser.error("--synthetic takes one path: the container to write")
        write_synthetic(args.paths[0], num_train=args.synthetic[0], num_test=args.synthetic[1])
        print(f"wrote a synthetic container of {args.synthetic[0]} + {args.synthetic[1]} images to {args.paths[0]}")
        return 0
    if len(args.paths) != 2:
        parser.error("decoding takes two paths: CONTAINER OUT")
    try:
        shapes = decode(*args.paths)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"decoded {args.paths[0]} -> {args.paths[1]}: " + ", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
