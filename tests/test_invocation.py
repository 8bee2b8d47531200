"""The commands the tool prints for a person to run start it the way it was started, so they
run when pasted into the same shell (issue 26, item 1)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bkdsearch.invocation import program
from bkdsearch.summary import next_command

BIN = Path(sys.executable).parent


def test_a_console_script_not_on_path_is_named_by_the_path_it_was_invoked_by(tmp_path, monkeypatch):
    monkeypatch.chdir(BIN.parent.parent)
    monkeypatch.setattr(sys, "argv", [f"{BIN.parent.name}/bin/bkdsearch", "run"])
    monkeypatch.setenv("PATH", str(tmp_path))
    assert program() == [f"{BIN.parent.name}/bin/bkdsearch"]
    line = next_command("status", spec_path="specs/a b.yaml", storage=None, study_name=None)
    assert line == f"{BIN.parent.name}/bin/bkdsearch status 'specs/a b.yaml'"


def test_a_console_script_on_path_is_plain_bkdsearch(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BIN / "bkdsearch"), "run"])
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}/usr/bin")
    assert program() == ["bkdsearch"]


def test_python_dash_m_names_its_interpreter_unless_the_script_beside_it_is_on_path(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(Path(__file__)), "run"])
    monkeypatch.setenv("PATH", str(tmp_path))
    assert program() == [sys.executable, "-m", "bkdsearch"]
    monkeypatch.setenv("PATH", str(BIN))
    assert program() == ["bkdsearch"]


@pytest.mark.parametrize("path_has_venv", [False, True])
def test_the_printed_command_runs_when_pasted_into_the_shell(tmp_path, path_has_venv):
    """End to end: the words printed by a process started from a shell, run by that shell."""
    env = {**os.environ, "PATH": (f"{BIN}{os.pathsep}" if path_has_venv else "") + "/usr/bin:/bin"}
    code = "from bkdsearch.summary import next_command as n; print(n('schema', spec_path=None, storage=None, " \
           "study_name=None))"
    line = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()
    assert line.split()[0] == ("bkdsearch" if path_has_venv else sys.executable)
    pasted = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert pasted.returncode == 0, pasted.stderr
    assert '"properties"' in pasted.stdout and shlex.split(line)[-1] == "schema"
