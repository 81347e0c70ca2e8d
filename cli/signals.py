"""Signals end bdtool's MLflow runs, never leave them RUNNING (docs/architecture.md, "MLflow").

While a command runs, SIGINT, SIGTERM, SIGHUP and SIGQUIT raise ``Interrupted`` (a
``KeyboardInterrupt``, so ``tracked_run`` ends every open run KILLED on the way out);
``BdtoolGroup.invoke`` prints one line and exits with 128 + the signal's number (SIGINT 130,
SIGTERM 143, SIGHUP 129, SIGQUIT 131).

- SIGINT and SIGQUIT are handled even when inherited as *ignored*: a shell starts a background
  job (``bdtool compare &`` in a script) with both ignored, and ``kill -INT`` must still stop it.
- SIGHUP and SIGTERM inherited as ignored stay ignored: ``nohup bdtool compare`` asks to survive
  the terminal closing.
- Only the first signal raises; later ones are ignored while the runs are being ended (SIGKILL
  still ends the process, and the next bdtool command marks its runs KILLED: ``orphans``).
- The signal is also recorded (``bdtool.core.interrupts``): if the first raise lands in a
  finalizer, which Python swallows, or in library code that turns it into another error, the next
  run boundary or progress report raises it again, and an error raised meanwhile ends its run
  KILLED, not FAILED.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from bdtool.core.interrupts import Interrupted, pending, request, reset, signal_name

__all__ = ["Interrupted", "exit_code_of", "name_of", "raising_interrupted", "signal_name"]

# Handled even when inherited ignored (shells ignore them for background jobs).
FORCED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGQUIT") if hasattr(signal, name))
# Handled unless inherited ignored (nohup, a deliberate SIG_IGN).
RESPECTED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
HANDLED = FORCED + RESPECTED


def signum_of(exc: KeyboardInterrupt) -> int:
    """The signal behind ``exc``: an ``Interrupted``'s; for a plain KeyboardInterrupt the signal
    recorded as pending (a library, such as Ray's ``wait``, may turn our raise into a plain one),
    else SIGINT (Ctrl-C)."""
    if isinstance(exc, Interrupted):
        return exc.signum
    return pending() or signal.SIGINT


def exit_code_of(exc: KeyboardInterrupt) -> int:
    """128 + N (130 for Ctrl-C)."""
    return 128 + signum_of(exc)


def name_of(exc: KeyboardInterrupt) -> str:
    return signal_name(signum_of(exc))


@contextmanager
def raising_interrupted() -> Iterator[None]:
    """Install the handlers for the duration of a command; the previous ones come back after it
    (so an in-process caller, such as click's CliRunner under pytest, keeps its own)."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal would raise
        yield
        return
    def handler(signum: int, frame: object) -> None:
        already = pending() is not None  # reset below when the handlers are installed
        request(signum)  # recorded first: a raise swallowed on its way is raised again (core/interrupts.py)
        if already:  # already unwinding: let the runs be ended
            return
        raise Interrupted(signum)

    previous: dict[int, object] = {}
    for sig in HANDLED:
        current = signal.getsignal(sig)
        if sig in RESPECTED and current is signal.SIG_IGN:
            continue
        previous[sig] = current
        signal.signal(sig, handler)
    reset()
    try:
        yield
    finally:
        reset()
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
