#!/usr/bin/env python3
"""Environment step of ``scripts/gpu_check.sh``: unpack carried wheels, check imports, record versions.

    python scripts/gpu_check_env.py --out env.json [--wheels WHEELS_DIR --site SITE_DIR] [--require-cuda]

With ``--wheels``, every ``*.whl`` in ``WHEELS_DIR`` is first unpacked into ``SITE_DIR``
(a folder the later steps put on ``PYTHONPATH``) with the standard library only, so a
machine without pip works too: a wheel is a zip archive whose files go into
site-packages as they are, and the contents of ``<name>.data/purelib`` and ``platlib``
go there as well. Then every module the check needs is looked up; a missing one stops
it with exit status 1, naming the module and its package; with ``--require-cuda`` it
exits 2 when torch sees no CUDA device. The versions (Python, torch, CUDA, cuDNN, GPU,
packages) go to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import zipfile
from pathlib import Path

#: module -> (package that provides it, what needs it)
REQUIRED = {
    "numpy": ("numpy", "everything"),
    "torch": ("torch", "everything"),
    "torchvision": ("torchvision", "the benchmark's reference loop"),
    "PIL": ("pillow", "the CIFAR-10 decoder"),
    "yaml": ("pyyaml", "Hydra configs"),
    "antlr4": ("antlr4-python3-runtime==4.9.3", "Hydra configs"),
    "omegaconf": ("omegaconf", "Hydra configs"),
    "hydra": ("hydra-core", "the study and the GPU tests"),
    "tqdm": ("tqdm", "the pipeline"),
    "scipy": ("scipy", "the metrics"),
    "sklearn": ("scikit-learn", "the metrics and tests"),
    "matplotlib": ("matplotlib", "the report's plots"),
    "tensorboard": ("tensorboard", "the report"),
    "pytest": ("pytest", "the GPU tests"),
}


def install_wheels(wheels: Path, site: Path) -> list[str]:
    """Unpack every wheel in ``wheels`` into ``site``; returns the wheel file names."""
    site.mkdir(parents=True, exist_ok=True)
    names = []
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                parts = Path(member.filename).parts
                if parts and parts[0].endswith(".data"):
                    if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                        continue  # scripts, headers and data files are not importable code
                    target = site.joinpath(*parts[2:])
                else:
                    target = site / member.filename
                if member.is_dir():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
        names.append(wheel.name)
    return names


def missing_modules() -> dict[str, str]:
    """Required modules that cannot be found, each with the reason.

    Presence is checked with :func:`importlib.util.find_spec`, which finds a module
    without running it (importing all of them would cost seconds); torch is imported
    for the versions anyway, and a module that is present but broken fails loudly in
    the stage that uses it.
    """
    missing = {}
    for module in REQUIRED:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError) as err:
            missing[module] = f"{type(err).__name__}: {err}"
            continue
        if not found:
            missing[module] = "not found on sys.path"
    return missing


def versions() -> dict[str, object]:
    """Interpreter, torch, CUDA and package versions, and the GPU torch sees."""
    import torch

    info: dict[str, object] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    from importlib.metadata import PackageNotFoundError, version

    for package in ("numpy", "torchvision", "pillow", "hydra-core", "omegaconf", "scipy", "scikit-learn", "pytest"):
        try:
            info[f"{package}_version"] = version(package)
        except PackageNotFoundError:
            info[f"{package}_version"] = None
    return info


def check(out: Path, *, require_cuda: bool) -> int:
    """Import check, version record and CUDA requirement; the exit status of ``check``."""
    missing = missing_modules()
    if missing:
        print("error: missing Python modules:", file=sys.stderr)
        for module, err in missing.items():
            package, needed_by = REQUIRED[module]
            print(f"  {module} (package {package}, needed by {needed_by}): {err}", file=sys.stderr)
        print(
            "Install them for this interpreter, or carry their wheels: scripts/gpu_check_prepare.sh downloads them "
            "into .wheels/, which gpu_check.sh unpacks onto PYTHONPATH (WHEELS=<folder> to use another).",
            file=sys.stderr,
        )
        return 1
    info = versions()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2))
    print("environment: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    if require_cuda and not info["cuda_available"]:
        print(
            "error: torch sees no CUDA device (torch.cuda.is_available() is False): run this on a GPU machine "
            "with a CUDA build of torch, or use --smoke for the CPU smoke run",
            file=sys.stderr,
        )
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="write the versions here (JSON)")
    parser.add_argument("--wheels", type=Path, default=None, help="unpack the wheels in this folder first")
    parser.add_argument("--site", type=Path, default=None, help="folder to unpack the wheels into")
    parser.add_argument("--require-cuda", action="store_true", help="fail when torch sees no CUDA device")
    args = parser.parse_args(argv)
    if args.wheels is not None:
        if args.site is None:
            parser.error("--wheels needs --site: the folder to unpack them into")
        if not args.wheels.is_dir():
            print(f"error: wheels folder {args.wheels} does not exist (WHEELS)", file=sys.stderr)
            return 1
        names = install_wheels(args.wheels, args.site)
        print(f"unpacked {len(names)} wheels into {args.site}: {', '.join(names) or '(none)'}")
        site = str(args.site.resolve())
        if site not in sys.path:
            sys.path.insert(0, site)
        sys.path_importer_cache.pop(site, None)  # it may not have existed when the interpreter started
        importlib.invalidate_caches()
    return check(args.out, require_cuda=args.require_cuda)


if __name__ == "__main__":
    sys.exit(main())
