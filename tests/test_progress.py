"""What a person sees while a run trains: one line per epoch in logs, a bar that moves with
every step in a terminal, a study line with an ETA."""

from __future__ import annotations

import io

from rich.console import Console

from bkdsearch.progress import LogProgress, RichProgress, clock, make_progress

ROW = {"loss": 1.2345, "val_acc": 55.5, "images_per_s": 812.0}


def test_logs_get_one_line_per_epoch_with_elapsed_and_eta() -> None:
    lines: list[str] = []
    progress = LogProgress("trial 3", lines.append)
    progress.begin(4, 1, 10)  # resumed after epoch 1
    for epoch in (2, 3):
        for _ in range(10):
            progress.step()
        progress.end_epoch({"epoch": epoch, **ROW})
    progress.finish()
    assert len(lines) == 2
    assert lines[0].startswith("trial 3 epoch 2/4, loss 1.2345, val 55.50%, 812 img/s, elapsed ")
    assert "ETA" in lines[0] and all(len(line) <= 80 for line in lines)


def test_a_terminal_bar_moves_within_an_epoch_and_fits_80_columns() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=True, color_system=None)
    progress = RichProgress("trial 0", console)
    progress.begin(2, 0, 10)
    for _ in range(4):
        progress.step()
    assert progress._bar.tasks[0].completed == 4  # within the first epoch
    progress.end_epoch({"epoch": 1, **ROW})
    assert "epoch 2/2" in progress._bar.tasks[0].description
    progress.finish()
    assert all(len(line) <= 80 for line in buffer.getvalue().splitlines())


def test_output_that_is_not_a_terminal_gets_log_lines() -> None:
    assert isinstance(make_progress("x", print, terminal=False), LogProgress)
    assert isinstance(make_progress("x", print, terminal=True), RichProgress)
    assert clock(65) == "1:05" and clock(3725) == "1:02:05"
