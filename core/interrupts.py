"""A stop asked for by a signal, that no code in between can lose (docs/architecture.md, "MLflow").

``bdtool.cli.signals`` turns SIGINT, SIGTERM, SIGHUP and SIGQUIT into ``Interrupted`` (a
``KeyboardInterrupt``) raised wherever the main thread happens to be. Python runs a signal handler
between any two bytecodes, so the exception can be raised inside a finalizer (``__del__``, a weakref
callback of SQLAlchemy's connection pool), where Python prints "Exception ignored in ..." and goes
on, or inside library code that turns it into an ordinary exception. The stop would then be lost:
the comparison went on to its end, or the next MLflow call failed on the half-used connection and
the run was counted as a failed defense (seen in CI: "basicFT (none) n=50 seed=1 failed: None",
then the comparison ran on and ignored every later signal).

So the handler also *records* the signal here (``request``), and the places that must not go on
after a stop ask for it again:

- ``check()`` raises ``Interrupted`` when a stop is pending: called before each (row, n, seed) run
  and at every progress report (each epoch of the training loop);
- ``raise_if_pending(exc)`` turns an exception raised while a stop was pending into ``Interrupted``
  (``tracked_run`` ends that run KILLED, not FAILED, and the comparison stops).

The state is per process and cleared by ``reset()`` when the handlers are removed.
"""

from __future__ import annotations

import signal


class Interrupted(KeyboardInterrupt):
    """The command was stopped by signal ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


_pending: int | None = None


def request(signum: int) -> None:
    """Record that signal ``signum`` asked the command to stop (the first one wins)."""
    global _pending
    if _pending is None:
        _pending = signum


def pending() -> int | None:
    """The signal that asked for a stop, or None."""
    return _pending


def reset() -> None:
    global _pending
    _pending = None


def check() -> None:
    """Raise ``Interrupted`` if a stop is pending (its first raise may have been swallowed)."""
    if _pending is not None:
        raise Interrupted(_pending)


def raise_if_pending(exc: BaseException) -> None:
    """Raise ``Interrupted`` (chained to ``exc``) when ``exc`` was raised while a stop was
    pending; return otherwise, for the caller to handle ``exc`` as it would."""
    if _pending is not None and not isinstance(exc, KeyboardInterrupt):
        raise Interrupted(_pending) from exc
