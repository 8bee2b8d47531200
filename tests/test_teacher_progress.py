"""A teacher's training shows its progress, with an ETA, in every command that can start it
(`train`, `teacher`, `compare`; `run` is covered by the worker tests), and `--devices` is the
one name for devices (issue 26, items 2 and 7)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_SPEC, write_spec

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "80"}
EPOCH_LINE = re.compile(r"^teacher resnet14 epoch (\d)/2, loss \d+\.\d{4}, val \d+\.\d\d%, \d+ img/s, "
                        r"elapsed \d+:\d\d, ETA \d+:\d\d$")


def _spec(tmp_path: Path) -> str:
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"]["synthetic"].update(train_size=256, test_size=64)
    spec["teacher"]["recipe"]["epochs"] = 2
    spec["train"]["epochs"] = 1
    return write_spec(tmp_path / "s.yaml", spec)


def _bkd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bkdsearch.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=600)


def _logical_lines(stdout: str) -> list[str]:
    """The log's lines with their wrapped continuations (indented by two) joined back."""
    lines: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("  ") and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def _teacher_epochs(stdout: str) -> list[int]:
    return [int(m.group(1)) for m in map(EPOCH_LINE.match, _logical_lines(stdout)) if m]


@pytest.mark.parametrize("command", ["train", "teacher"])
def test_a_teacher_trained_by_the_command_shows_each_epoch_with_an_eta(tmp_path, command):
    r = _bkd(command, _spec(tmp_path), "--devices", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "training the teacher resnet14 with CE for 2 epochs" in r.stdout
    assert _teacher_epochs(r.stdout) == [1, 2], r.stdout
    assert all(len(line) <= 80 for line in r.stdout.splitlines() if "epoch" in line), r.stdout
    if command == "train":  # then the student's own run, the same way
        assert any(re.match(r"train resnet8 epoch 1/1, loss .*, ETA 0:00$", x) for x in _logical_lines(r.stdout))
    assert "--device is now --devices" not in r.stderr


def test_the_old_device_flag_still_works_with_a_notice(tmp_path, teacher_ckpt):
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"]["checkpoint"] = teacher_ckpt
    r = _bkd("teacher", write_spec(tmp_path / "s.yaml", spec), "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note: --device is now --devices" in r.stderr and "test accuracy" in r.stdout
    assert "--devices" in _bkd("train", "--help", cwd=tmp_path).stdout
    assert "--device " not in _bkd("compare", "--help", cwd=tmp_path).stdout.replace("--devices", "")


def test_compare_shows_the_teacher_each_run_and_a_running_table_and_one_seed_without_spread(tmp_path):
    r = _bkd("compare", _spec(tmp_path), "--methods", "ce,kd", "--seeds", "1", "--devices", "cpu",
             "-o", str(tmp_path / "cmp"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _teacher_epochs(r.stdout) == [1, 2], r.stdout
    lines = _logical_lines(r.stdout)
    for label in (r"\[1/2\] ce", r"\[2/2\] kd"):
        assert any(re.match(label + r" seed 0 epoch 1/1, loss .*ETA 0:00$", x) for x in lines), r.stdout
    so_far = r.stdout.index("### so far (1 of 2 runs)")
    assert "| ce | 1 |" in r.stdout[so_far:r.stdout.index("[2/2] kd")]
    table = r.stdout[r.stdout.index("### tiny: ce, kd x 1 seed\n"):]
    assert "±" not in table and re.search(r"\| kd \| 1 \| \d+\.\d\d \| \d+\.\d\d \|", table), table
    assert "1 seeds" not in r.stdout
