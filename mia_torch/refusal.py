"""How mia_torch's commands refuse bad input: one clean message on stderr and exit status 2.

A refusal (a bad config value, a missing or malformed file, an unsafe run directory) is an
exception of one of the :data:`REFUSALS` types whose message names the key or file and what to
do. A command runs its work inside :func:`clean_refusals`, which prints that message alone
(with the messages it was raised from, when they add something) and exits with
:data:`EXIT_REFUSED`. The traceback is shown only when the environment variable
``MIA_DEBUG=1`` is set (the message says so). Anything else is a crash and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

__all__ = ["DEBUG_ENV", "EXIT_REFUSED", "REFUSALS", "clean_refusals", "debugging", "message_of", "status_of"]

#: Set to 1 to see the traceback of a refusal.
DEBUG_ENV = "MIA_DEBUG"
#: Exit status of a refused command (1 stays what each command documents, e.g. MISMATCH).
EXIT_REFUSED = 2
#: Exception types that carry a user-facing message rather than a bug.
REFUSALS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError, HydraException,
                                             OmegaConfBaseException)
_CHAINED = 3


def debugging() -> bool:
    """Whether ``MIA_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false")


def message_of(err: BaseException) -> str:
    """``err``'s message, followed by those it was raised from that add something (at most a few)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(parts) < _CHAINED:
        seen.add(id(current))
        text = str(current).strip() or type(current).__name__
        if not any(text in part for part in parts):
            parts.append(text)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n  because: ".join(parts)


@contextlib.contextmanager
def clean_refusals(prog: str, *, refusals: tuple[type[BaseException], ...] = REFUSALS,
                   translate: Callable[[BaseException], str] = message_of) -> Iterator[None]:
    """Turn a refusal raised in the block into ``<prog>: error: <message>`` on stderr and exit status 2.

    ``translate`` makes the message of an exception (default :func:`message_of`). With
    ``MIA_DEBUG=1`` the exception propagates with its traceback instead.
    """
    try:
        yield
    except refusals as err:
        if debugging():
            raise
        print(f"{prog}: error: {translate(err)}\n({prog}: set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr,
              flush=True)
        raise SystemExit(EXIT_REFUSED) from None


def status_of(prog: str, work: Callable[[], Any], *, refusals: tuple[type[BaseException], ...] = REFUSALS) -> int:
    """The exit status of a command whose ``work()`` returns it (None: 0); a refusal it raises is printed as by
    :func:`clean_refusals` and gives :data:`EXIT_REFUSED`. For ``main(argv) -> int`` functions that tests call."""
    try:
        with clean_refusals(prog, refusals=refusals):
            return int(work() or 0)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_REFUSED
