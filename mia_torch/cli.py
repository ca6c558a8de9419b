"""`mia-run`: the Hydra entry point of the installed package.

The configs are read from the package (``pkg://mia_torch.conf``: the top-level
``configs/`` of a checkout, linked as ``mia_torch/conf`` and shipped in the wheel), so
``mia-run`` works from any directory after ``pip install .``, a wheel or an editable install.

A refusal, whether Hydra's (an unknown key or option, a malformed override) or mia_torch's (a
bad value, a missing file), is printed as one message and exits with status 2
(:mod:`mia_torch.refusal`); ``MIA_DEBUG=1`` shows the traceback. A mistyped key gets the same
"did you mean" with or without Hydra's ``+``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import hydra
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from mia_torch.refusal import clean_refusals, message_of
from mia_torch.settings.schemas import register_configs
from mia_torch.settings.load import CONFIG_PACKAGE, shipped_keys, shipped_options, unknown_keys_message

CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"
PROG = "mia-run"
_OVERRIDE_FAILED = re.compile(r"Could not override '([^']+)'")

register_configs()


def explain_hydra_error(err: BaseException) -> str:
    """The message of a refusal, with Hydra's "use +key" for an unknown key replaced by our "did you mean"."""
    cause = err.__cause__
    match = _OVERRIDE_FAILED.search(str(err))
    unknown_key = isinstance(cause, (ConfigKeyError, ConfigAttributeError))
    if isinstance(err, ConfigCompositionException) and match and unknown_key:
        parent, _, key = match.group(1).rpartition(".")
        if not parent:
            primary, groups = shipped_keys()
            return unknown_keys_message([key], primary | groups)
        siblings = getattr(cause, "parent_node", None)
        if siblings is not None and hasattr(siblings, "keys"):
            return unknown_keys_message([key], siblings.keys(), parent=parent)
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override {err.override!r}: {err.message}"
    if isinstance(err, MissingConfigException):  # what was missing and the shipped options, not the search path
        text = str(err).split("\n\nConfig search path")[0].strip()
        group = re.search(r"'([A-Za-z_]\w*)/[^']*'", text)
        options = shipped_options(group.group(1)) if group else ()
        return text + (f" Options of `{group.group(1)}`: {', '.join(options)}" if options else "")
    return message_of(err)


@contextlib.contextmanager
def _hydra_errors_raised() -> Iterator[None]:
    """Let Hydra raise its errors to the caller instead of printing and exiting itself (``HYDRA_FULL_ERROR``)."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    """Run the configured experiment (see configs/config.yaml).

    A refusal of a single run exits here with its message; in a multirun it fails only its
    own job, and Hydra raises the first failure once the sweep's jobs have run.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mia_torch.pipeline import run

    single = HydraConfig.get().mode == RunMode.RUN
    with clean_refusals(PROG) if single else contextlib.nullcontext():
        run(cfg)


def main() -> None:
    """``mia-run``: the Hydra app (reads ``sys.argv``), refusals printed as one message with exit status 2."""
    with clean_refusals(PROG, translate=explain_hydra_error), _hydra_errors_raised():
        hydra_main()


if __name__ == "__main__":
    main()
