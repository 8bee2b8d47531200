"""Progress displays for runs (what :class:`bkdsearch.core.engine.trainer.Progress` is told): a
rich bar that moves with every step on a terminal, one log line per epoch otherwise; and the
log lines themselves: on a terminal, wrapped to its width between their items (never inside a
word, a path or a URL) and printed above a moving bar, never onto it."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI formats with this module without importing torch
    from .core.engine.trainer import Progress


def epoch_line(label: str, row: Mapping[str, float], epochs: int, elapsed_s: float, eta_s: float | None) -> str:
    """Return the one-line summary of an epoch: label, epoch/total, loss, val acc, img/s,
    elapsed and ETA."""
    parts = [f"{label} epoch {int(row['epoch'])}/{epochs}", f"loss {row['loss']:.4f}"]
    if "val_acc" in row:
        parts.append(f"val {row['val_acc']:.2f}%")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    parts.append(f"elapsed {clock(elapsed_s)}")
    if eta_s is not None:
        parts.append(f"ETA {clock(eta_s)}")
    return ", ".join(parts)


def percent(value: float | None) -> str:
    """Return an accuracy as shown to a person: ``71.25%``, or ``-`` when unknown."""
    return "-" if value is None else f"{value:.2f}%"


def clock(seconds: float) -> str:
    """Return ``seconds`` as ``m:ss`` or ``h:mm:ss``."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


_ITEM_END = re.compile(r"(?<=[,;:]) ")
"""Where a log line may break between items: after ", ", "; " or ": "."""

_LIVE: list[Any] = []
"""The rich bars on screen now (a log line goes above the last one)."""
_LIVE_LOCK = threading.Lock()


def wrap_line(text: str, width: int, indent: str = "  ") -> list[str]:
    """Return ``text`` as lines of at most ``width`` columns, broken between its items (after
    ", ", "; " or ": "), continuation lines indented by ``indent``. An item longer than a line
    is broken between its words; a single word (a path, a URL, ``key=value``) is never broken,
    so it may overrun a narrow width. Lines ``text`` already breaks stay broken there."""
    if "\n" in text:
        return [line for part in text.split("\n") for line in wrap_line(part, width, indent)]
    width = max(width, 20)
    lines: list[str] = []
    line = ""
    for item in _ITEM_END.split(text):
        room = width - (len(indent) if lines else 0)
        joined = f"{line} {item}" if line else item
        if len(joined) <= room:
            line = joined
            continue
        if len(item) <= width - len(indent):  # the item fits a line of its own: start one
            if line:
                lines.append(line)
            line = item
            continue
        for word in item.split():  # longer than any line: between its words, from here on
            room = width - (len(indent) if lines else 0)
            if line and len(line) + 1 + len(word) > room:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
    if line or not lines:
        lines.append(line)
    return [lines[0], *(indent + rest for rest in lines[1:])]


def console_log(console: Any) -> Callable[[str], None]:
    """Return a log function for ``console`` (a rich Console): on a terminal each message is
    wrapped to its width with :func:`wrap_line` and printed on lines of its own, above the
    progress bar while one is on screen (a Ctrl-C notice never lands on the bar's line); in
    a file or a pipe each message stays one whole line (for grep)."""

    def log(message: str) -> None:
        with _LIVE_LOCK:
            live = _LIVE[-1] if _LIVE else None
        target = live.console if live is not None else console
        text = "\n".join(wrap_line(message, target.width)) if target.is_terminal else message
        target.print(text, markup=False, highlight=False, soft_wrap=True)

    return log


class LogProgress:
    """One log line per epoch (for output that is not a terminal: log files, CI)."""

    def __init__(self, label: str, log: Callable[[str], None]) -> None:
        self.label, self.log = label, log
        self._epochs = self._start = 0
        self._t0 = 0.0

    def begin(self, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
        """Remember the span of the run for the ETA."""
        self._epochs, self._start, self._t0 = epochs, start_epoch, time.monotonic()

    def step(self) -> None:
        """Nothing per step: a log gets one line per epoch."""

    def end_epoch(self, row: Mapping[str, float]) -> None:
        """Log the epoch's line with elapsed time and ETA (from this run's epochs so far)."""
        elapsed = time.monotonic() - self._t0
        done = int(row["epoch"]) - self._start
        eta = elapsed / done * (self._epochs - int(row["epoch"])) if done > 0 else None
        self.log(epoch_line(self.label, row, self._epochs, elapsed, eta))

    def finish(self) -> None:
        """Nothing to close."""


class RichProgress:
    """A rich progress bar over the whole run's steps (a resumed run starts where it left
    off: 25 of 50 after half the epochs), with the ETA and the last epoch's metrics beside it,
    fitting the console's width."""

    def __init__(self, label: str, console: Any = None) -> None:
        self.label, self.console = label, console
        self._bar: Any = None
        self._task: Any = None
        self._epochs = 0

    def begin(self, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
        """Open the bar over all the run's steps, the epochs already trained counted done."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        self._epochs = epochs
        # The metrics column gives way first (cut with an ellipsis), never the label or the ETA.
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(),
                             TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True,
                                                                                    overflow="ellipsis")),
                             console=self.console, transient=False)
        self._bar.start()
        with _LIVE_LOCK:
            _LIVE.append(self._bar)
        self._task = self._bar.add_task(f"{self.label} epoch {min(start_epoch + 1, epochs)}/{epochs}",
                                        total=epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch,
                                        info="")

    def step(self) -> None:
        """Advance the bar by one step."""
        if self._bar is not None:
            self._bar.advance(self._task)

    def end_epoch(self, row: Mapping[str, float]) -> None:
        """Show the epoch's loss, val acc and speed beside the bar."""
        if self._bar is None:
            return
        info = f"loss {row['loss']:.3f}" + (f" val {row['val_acc']:.2f}%" if "val_acc" in row else "")
        nxt = min(int(row["epoch"]) + 1, self._epochs)
        self._bar.update(self._task, description=f"{self.label} epoch {nxt}/{self._epochs}", info=info)

    def finish(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.stop()
            with _LIVE_LOCK:
                if self._bar in _LIVE:
                    _LIVE.remove(self._bar)
            self._bar = None


def make_progress(label: str, log: Callable[[str], None] = print, *, terminal: bool | None = None,
                  console: Any = None) -> Progress:
    """Return a bar (on ``console``, default rich's) when stdout is a terminal (or
    ``terminal``), else one line per epoch to ``log`` (:func:`console_log` fits them to a
    terminal's width)."""
    if terminal is None:
        terminal = sys.stdout.isatty()
    return RichProgress(label, console) if terminal else LogProgress(label, log)
