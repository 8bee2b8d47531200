"""What a person sees while a run trains: one line per epoch in logs, a bar that moves with
every step in a terminal, a study line with an ETA."""

from __future__ import annotations

import io
import re

from rich.console import Console

from bkdsearch.progress import LogProgress, RichProgress, clock, console_log, make_progress, wrap_line

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


# --------------------------------------------------------------------------- 80 columns (issue 26, item 6)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _segments(raw: str) -> list[str]:
    """What a terminal shows of ``raw``: its text between line feeds and carriage returns."""
    return [s for s in re.split(r"[\r\n]", ANSI.sub("", raw)) if s.strip()]


def test_a_long_log_line_wraps_between_items_never_inside_a_word() -> None:
    line = ("trial 12 started on cpu: blockkd.partition=stage, blockkd.order=shallow_first, "
            "blockkd.tau=3.979, train.lr=0.06123, blockkd.connector=conv1x1_bn; study quickstart: "
            "3/4 done (1 pruned), 1 running, 0 failed; best 61.25% (#2); ETA 1:01")
    lines = wrap_line(line, 80)
    assert len(lines) > 1 and all(len(x) <= 80 for x in lines), lines
    assert all(x.startswith("  ") for x in lines[1:])
    assert " ".join(x.strip() for x in lines) == line  # nothing lost, every word whole
    words = set(line.split())
    assert all(set(x.split()) <= words for x in lines)
    assert any("ETA 1:01" in x for x in lines)  # an item stays on one line
    assert wrap_line("short", 80) == ["short"]


def test_epoch_lines_in_logs_fit_80_columns(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    lines: list[str] = []
    progress = make_progress("teacher resnet110 (cached under studies/teachers)", lines.append, terminal=False)
    progress.begin(240, 0, 10)
    progress.end_epoch({"epoch": 1, **ROW})
    shown = lines[0].split("\n")
    assert len(shown) == 2 and all(len(x) <= 80 for x in shown), shown
    assert "ETA" in lines[0] and "epoch 1/240" in shown[0]


def test_a_resumed_run_s_bar_counts_the_whole_run() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=True, color_system=None)
    progress = RichProgress("trial 4", console)
    progress.begin(2, 1, 25)  # resumed after epoch 1 of 2
    task = progress._bar.tasks[0]
    assert (task.completed, task.total) == (25, 50) and "epoch 2/2" in task.description
    for _ in range(25):
        progress.step()
    progress.end_epoch({"epoch": 2, **ROW})
    progress.finish()
    shown = _segments(buffer.getvalue())
    assert any("50/50" in s for s in shown) and not any("25/25" in s for s in shown), shown
    assert all(len(s) <= 80 for s in shown)


def test_a_notice_during_a_bar_gets_its_own_line_wrapped_to_80_columns() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=True, color_system=None)
    other = Console(file=io.StringIO(), width=80)  # the CLI's console: the bar's takes the line
    log = console_log(other)
    progress = RichProgress("trial 0 epoch", console)
    progress.begin(3, 0, 10)
    progress.step()
    progress.end_epoch({"epoch": 1, **ROW})
    notice = ("interrupted: stopping; the running trials end as failed and are queued to resume "
              "(Ctrl-C again to stop at once)")
    log(notice)
    progress.finish()
    shown = _segments(buffer.getvalue())
    starts = [s for s in shown if "interrupted" in s]
    assert starts and all(s.startswith("interrupted: stopping;") for s in starts), shown
    assert not any("trial 0" in s and "interrupted" in s for s in shown)
    assert any(s.startswith("  (Ctrl-C again") or s.startswith("  the running") for s in shown), shown
    assert all(len(s) <= 80 for s in shown), shown
    assert other.file.getvalue() == ""  # went above the bar, not beside it
    log("after the bar")
    assert other.file.getvalue() == "after the bar\n"
