"""Child processes that die with the process that started them (runner workers, bench children).

A run killed with SIGKILL runs no clean-up of its own: without this its workers would keep
polling the database, adopted by init.
"""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable


def _parent_death_signal() -> Callable[[], None]:
    """Linux: ask for SIGKILL when the parent dies; elsewhere nothing.

    Resolved here, in the parent: the function runs in the child between fork and exec,
    where it must do nothing but the one system call.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ``preexec_fn`` for every child that must not outlive its parent.
die_with_parent = _parent_death_signal()
