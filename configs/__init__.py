"""The Hydra configs, importable as ``mia_torch.conf`` (``mia_torch/conf`` links here) so that they ship in the package."""
