"""Progress displays for runs (what :class:`bkdsearch.core.engine.trainer.Progress` is told): a
rich bar that moves with every step on a terminal, one log line per epoch otherwise."""

from __future__ import annotations

import sys
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
    """A rich progress bar over the run's steps, with the last epoch's metrics beside it."""

    def __init__(self, label: str, console: Any = None) -> None:
        self.label, self.console = label, console
        self._bar: Any = None
        self._task: Any = None
        self._epochs = 0

    def begin(self, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
        """Open the bar over the remaining epochs' steps."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._epochs = epochs
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console,
                             transient=False)
        self._bar.start()
        self._task = self._bar.add_task(f"{self.label} epoch {start_epoch + 1}/{epochs}",
                                        total=(epochs - start_epoch) * steps_per_epoch, info="")

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
            self._bar = None


def make_progress(label: str, log: Callable[[str], None] = print, *, terminal: bool | None = None) -> Progress:
    """Return a bar when stdout is a terminal (or ``terminal``), else one log line per epoch."""
    if terminal is None:
        terminal = sys.stdout.isatty()
    return RichProgress(label) if terminal else LogProgress(label, log)
