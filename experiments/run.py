"""Run one experiment: `python experiments/run.py [overrides]` (same as `mia-run`)."""

import hydra
from omegaconf import DictConfig

from mia_torch.configs import register_configs
from mia_torch.pipeline import run

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    """Compose the config and hand it to the pipeline."""
    run(cfg)


if __name__ == "__main__":
    main()
