"""A real install: build a wheel offline, install it non-editable into a fresh venv, run `mia-run` elsewhere.

The fresh venv borrows this environment's dependencies (torch, hydra, ...) through a
``.pth`` file that lists this environment's site-packages as plain paths, so no
``.pth`` file there is processed and an editable mia_torch installed here stays
invisible: the only mia_torch the fresh venv can import is the wheel's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import REPO
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults

PACKAGING_INPUTS = ("pyproject.toml", "README.md", "mia_torch", "configs")


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: int = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding the wheel built from this checkout, and the environment to run it in."""
    assert importlib.util.find_spec("setuptools"), "building the wheel offline needs setuptools: pip install -e '.[dev]'"
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # build from a copy: setuptools writes build/ and *.egg-info next to its input
    source.mkdir()
    for name in PACKAGING_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "wheels", source], cwd=root)
    wheel = next((root / "wheels").glob("mia_torch-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
                .stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "borrowed_dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=root)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MIA_DATA_DIR", "MIA_STORE_DIR")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return venv, env


def test_the_wheel_ships_the_configs_and_is_what_gets_imported(installed, tmp_path):
    venv, env = installed
    code = ("import mia_torch, importlib.resources as r; print(mia_torch.__file__); "
            "print(sorted(p.name for p in r.files('mia_torch.conf').iterdir()))")
    out = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path, env=env).stdout.splitlines()
    assert Path(out[0]).resolve().is_relative_to(venv.resolve()), out[0]  # not the checkout, not an editable copy
    for expected in ("config.yaml", "attack", "dataset", "model", "train", "experiment"):
        assert expected in out[1]


def test_installed_mia_run_composes_and_runs_from_outside_the_checkout(installed, tmp_path):
    venv, env = installed
    job = _run([venv / "bin" / "mia-run", "--cfg", "job"], cwd=tmp_path, env=env).stdout
    assert "num_models: 16" in job and "name: digits" in job and "_target_: mia_torch.attacks.LiRA" in job
    _run([venv / "bin" / "mia-run", "dataset=synthetic", "dataset.num_examples=120", "dataset.num_test=40",
          "model=mlp", "num_models=4", "train.epochs=1", "attack=[loss,rmia]", "bootstrap=0", "sanity_check=false",
          "progress=false", "num_threads=1", f"store_dir={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}"],
         cwd=tmp_path, env=env)
    results = RunResults.from_dict(read_json(tmp_path / "run" / "results.json"))
    assert results.trained_models == [0, 1, 2, 3]
    assert set(results.attacks) == {"loss", "rmia"}
    assert results.versions and not (tmp_path / "outputs").exists()  # everything went where it was told
    assert 'id="study-verdict"' in (tmp_path / "run" / "report.html").read_text()  # the templates ship in the wheel
    assert "usage: mia-report" in _run([venv / "bin" / "mia-report", "--help"], cwd=tmp_path, env=env).stdout
