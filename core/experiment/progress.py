"""Progress reporting to stderr: one line per task, redrawn in place on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from bdtool.core import interrupts


class ProgressPrinter:
    """A ``progress(label, done, total)`` callable. On a TTY it redraws one line; otherwise it
    prints a line when a task finishes or at most every ``interval`` seconds. The elapsed time
    runs from a task's first call until it finishes; the text in parentheses after a label's stem
    ("compare (NAD (none), n=50, seed=2)") is a detail that changes as the task goes on, so the
    timer is kept per stem."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, interval: float = 5.0,
                 prefix: str = "") -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.prefix = prefix
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._open_line = False

    def __call__(self, label: str, done: int, total: int) -> None:
        interrupts.check()  # every progress report is a point where a pending stop is raised again
        if not self.enabled:
            return
        now = time.monotonic()
        stem = label.split(" (", 1)[0]  # "compare (Ours (trigger), n=50, seed=1)": the timer is "compare"'s
        start = self._start.setdefault(stem, now)
        finished = done >= total
        if not self.tty and not finished and now - self._last.get(label, 0.0) < self.interval:
            return
        self._last[label] = now
        width = 24
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        text = f"{self.prefix}{label} [{bar}] {done}/{total} {now - start:6.1f}s"
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if finished else ""))
            self._open_line = not finished
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        if finished:
            self._start.pop(stem, None)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._open_line:
            self.stream.write("\r\033[K")
            self._open_line = False
        self.stream.write(f"{self.prefix}{text}\n")
        self.stream.flush()
