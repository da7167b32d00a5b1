"""Feedback on long work: a progress bar (tqdm) on a terminal, plain lines otherwise.

``Progress`` counts work whose position is known (events replayed, certificates imported): on a
terminal a bar that updates in place; when stderr is a pipe or a file (a log, CI, ``2>&1 | tee``)
one plain line at every tenth of the total, or every ``every_s`` seconds when the total is unknown,
with no control characters. ``Working`` is for waits with no position (an API that answers when it
has finished): a spinner with the time elapsed on a terminal, a line every ``every_s`` seconds
otherwise. Both are safe to update from another thread (SQLite work runs in one).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

PLAIN_EVERY_S = 10.0  # a plain line this often when there is no total to take tenths of
STEPS = 10  # plain lines at every tenth of a known total


def clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _width(out: TextIO) -> dict[str, Any]:
    """Follow the terminal's width; a terminal that reports none (0 columns) gets 80."""
    try:
        columns = os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return {"dynamic_ncols": True} if columns else {"ncols": 80}


class Progress:
    """Work counted in ``unit``s toward ``total`` (None: unknown)."""

    def __init__(
        self,
        label: str,
        unit: str,
        total: int | None = None,
        out: TextIO | None = None,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.label, self.unit, self.total = label, unit, total
        self._out = out if out is not None else sys.stderr
        self._every_s = every_s
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_line = self._start
        self._step = 0
        self._done = 0
        self._detail = ""
        self._bar: tqdm[None] | None = None
        if self._out.isatty():
            self._bar = tqdm(
                total=total,
                desc=label,
                unit=f" {unit}",
                file=self._out,
                leave=True,
                **_width(self._out),
            )

    @property
    def terminal(self) -> bool:
        return self._bar is not None

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        """Report the position reached (absolute, not an increment) and, optionally, a short detail."""
        with self._lock:
            if total is not None and total != self.total:
                self.total = total
                if self._bar is not None:
                    self._bar.total = total
            self._done = done
            self._detail = detail
            if self._bar is not None:
                if detail:
                    self._bar.set_postfix_str(detail, refresh=False)
                self._bar.update(done - self._bar.n)
                return
            self._plain(final=False)

    def note(self, text: str) -> None:
        """A line of its own (a refusal, a warning) that does not garble the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self._out)
            else:
                self._out.write(text + "\n")
                self._out.flush()

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self._done and self._step < STEPS:
                self._plain(final=True)

    def _plain(self, final: bool) -> None:
        now = time.monotonic()
        if self.total:
            step = min(STEPS, self._done * STEPS // self.total)
            if step <= self._step and not final:
                return
            self._step = step
        elif not final and now - self._last_line < self._every_s:
            return
        self._last_line = now
        elapsed = now - self._start
        rate = self._done / elapsed if elapsed > 0 else 0.0
        where = (
            f"{self._done:,}/{self.total:,} {self.unit} ({self._done * 100 // self.total}%)"
            if self.total
            else f"{self._done:,} {self.unit}"
        )
        detail = f"; {self._detail}" if self._detail else ""
        self._out.write(f"{self.label}: {where}{detail}; {rate:,.0f}/s, {clock(elapsed)}\n")
        self._out.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Working:
    """A wait with no position: a spinner on a terminal, a line every ``every_s`` seconds otherwise.

    ``phase(text)`` names what is being waited for now; the plain line (every ``every_s`` seconds, so a
    short wait prints nothing) names it.
    """

    def __init__(self, label: str, out: TextIO | None = None, every_s: float = PLAIN_EVERY_S) -> None:
        self.label = label
        self._out = out if out is not None else sys.stderr
        self._every_s = every_s
        self._phase = ""
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._bar: tqdm[None] | None = None
        if self._out.isatty():
            self._bar = tqdm(
                total=None,
                desc=f"{label}: ",
                file=self._out,
                bar_format="{desc}{elapsed}",
                leave=False,
                **_width(self._out),
            )
        self._thread = threading.Thread(target=self._tick, name=f"progress {label}", daemon=True)
        self._thread.start()

    def phase(self, text: str) -> None:
        with self._lock:
            self._phase = text
            if self._bar is not None:
                self._bar.set_description_str(f"{self.label}: {text}, ")

    def _tick(self) -> None:
        interval = 0.5 if self._bar is not None else self._every_s
        while not self._stop.wait(interval):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()
                else:
                    elapsed = time.monotonic() - self._start
                    phase = f": {self._phase}" if self._phase else ""
                    self._out.write(f"{self.label}{phase}; still working, {clock(elapsed)}\n")
                    self._out.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> Working:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
