"""`mia-run`: the Hydra entry point of the installed package.

The configs are read from the package (``pkg://mia_torch.conf``: the top-level
``configs/`` of a checkout, linked as ``mia_torch/conf`` and shipped in the wheel), so
``mia-run`` works from any directory after ``pip install .``, a wheel or an editable install.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mia_torch.settings.schemas import register_configs
from mia_torch.settings.load import CONFIG_PACKAGE

CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> None:
    """Run the configured experiment (see configs/config.yaml)."""
    from mia_torch.pipeline import run

    run(cfg)


if __name__ == "__main__":
    main()
