"""`mia-run`: the Hydra entry point of the installed package."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mia_torch.configs import register_configs

CONFIG_DIR = os.environ.get("MIA_TORCH_CONFIG_DIR", str(Path(__file__).resolve().parents[1] / "configs"))

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Run the configured experiment (see configs/config.yaml)."""
    from mia_torch.pipeline import run

    run(cfg)


if __name__ == "__main__":
    main()
