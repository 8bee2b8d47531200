"""The command line: exit codes, messages, `train` end to end."""

import copy
import json
import os
import subprocess
import sys

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPEC, write_spec

from bkdsearch.cli import main
from bkdsearch.spec import Defaults, Spec, resolve
from bkdsearch.zoo import create_model

# The venv's bin first on PATH, as in an activated venv: the next commands a run prints say
# plain `bkdsearch` (tests/test_invocation.py covers the other shells).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def bkd(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bkdsearch.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def test_validate_ok_and_schema(tmp_path):
    r = bkd("validate", write_spec(tmp_path / "s.yaml", TINY_SPEC))
    assert r.returncode == 0, r.stderr
    assert "resnet14 -> resnet8" in r.stdout and "layer1.1" in r.stdout
    r = bkd("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert "student" in schema["properties"] and schema["additionalProperties"] is False


@pytest.mark.parametrize("mutate, needle", [
    (lambda s: s.update(method="distill"), "method"),
    (lambda s: s["partitions"].update(stage={"teacher": ["layer1.1", "layer2.1"], "student": ["layer2.0", "layer1.0"]}),
     "partitions.stage"),
    (lambda s: s["teacher"].update(checkpoint="/nonexistent/teacher.pt"), "teacher checkpoint not found"),
])
def test_bad_input_exits_2_without_traceback(tmp_path, mutate, needle):
    spec = copy.deepcopy(TINY_SPEC)
    mutate(spec)
    r = bkd("train", write_spec(tmp_path / "s.yaml", spec), "--out", str(tmp_path / "run"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_spec_file_and_bad_set(tmp_path):
    r = bkd("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "cannot read spec" in r.stderr
    r = bkd("train", write_spec(tmp_path / "s.yaml", TINY_SPEC), "--set", "train.lrr=0.1")
    assert r.returncode == 2 and "train.lrr" in r.stderr and "Traceback" not in r.stderr


def test_train_writes_metrics_and_loadable_student(tmp_path, teacher_ckpt):
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"]["checkpoint"] = teacher_ckpt
    out = tmp_path / "run"
    r = bkd("train", write_spec(tmp_path / "s.yaml", spec), "--set", "train.epochs=1",
            "--set", "blockkd.order=deep_first", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 1 and "val_acc" in rows[0] and rows[-1]["final"]
    model = create_model("resnet8", num_classes=10)
    model.load_state_dict(torch.load(out / "student.pt", weights_only=True), strict=True)
    assert json.loads((out / "config.json").read_text())["blockkd"]["order"] == "deep_first"


def test_run_artifact_dir_option_wins_and_log_lines_do_not_wrap(tmp_path, teacher_ckpt):
    """--artifact-dir DIR puts the checkpoints of running trials in DIR/<study>, over
    BKDSEARCH_ARTIFACT_DIR and the default studies/<study>/artifacts; log lines stay whole
    in a 40-column terminal."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["teacher"]["checkpoint"] = teacher_ckpt
    spec["train"]["epochs"] = 1
    spec["search"] = {"n_trials": 1, "pruner": "none"}
    env = {**ENV, "BKDSEARCH_ARTIFACT_DIR": str(tmp_path / "env-artifacts"), "COLUMNS": "40"}
    r = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "run", write_spec(tmp_path / "s.yaml", spec),
                        "--quiet", "--artifact-dir", str(tmp_path / "shared")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert [p for p in (tmp_path / "shared" / "tiny").rglob("*") if p.is_file()], "no checkpoint artifact"
    assert not (tmp_path / "env-artifacts").exists()
    assert not (tmp_path / "studies" / "tiny" / "artifacts").exists()
    assert "study tiny: 1/1 done (0 pruned), 0 running, 0 failed; best " in r.stdout
    assert "study tiny in sqlite:///studies/tiny.db; cap 1 trials; devices cpu x 1" in r.stdout


# --------------------------------------------------------------------------- strict inputs, SPEC arguments


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def study_dir(tmp_path, monkeypatch):
    """tmp_path as the working folder, holding s.yaml (TINY_SPEC) and its default study
    studies/tiny.db with trial 0 COMPLETE and trial 1 PRUNED, both with their RunConfig."""
    monkeypatch.chdir(tmp_path)
    spec = Spec.model_validate(TINY_SPEC)
    cfg = resolve(spec, Defaults()).model_dump(mode="json")
    write_spec(tmp_path / "s.yaml", TINY_SPEC)
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(study_name="tiny", storage="sqlite:///studies/tiny.db", direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=61.5,
                                              user_attrs={"run_config": cfg, "test_acc": 60.0}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 20.0},
                                              user_attrs={"run_config": cfg, "pruned_reason": "epoch 1"}))
    return tmp_path


@pytest.mark.parametrize("name", ["../../escape", "", "a/b", "x" * 65, ".."])
@pytest.mark.parametrize("command", [
    ["run", "s.yaml"], ["status", "s.yaml"], ["status", "--storage", "sqlite:///studies/tiny.db"],
    ["export", "s.yaml", "-o", "out.py"], ["report", "s.yaml", "-o", "rep"],
])
def test_study_names_are_refused_with_the_rule(study_dir, command, name):
    before = sorted(p.relative_to(study_dir) for p in study_dir.rglob("*"))
    result = invoke(*command, "--study", name)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert f"--study: {name!r} is not a study name" in result.stderr
    assert "1 to 64 letters, digits, '-', '_' or '.'" in result.stderr
    assert sorted(p.relative_to(study_dir) for p in study_dir.rglob("*")) == before  # nothing written
    assert not (study_dir.parent.parent / "escape").exists()


@pytest.mark.parametrize("command, output", [
    (["export", "s.yaml", "--trial", "best", "-o"], "/proc/forbidden/train.py"),
    (["report", "s.yaml", "-o"], "/proc/forbidden/report"),
    (["export", "s.yaml", "--trial", "best", "-o"], "s.yaml/train.py"),  # below a file
    (["report", "s.yaml", "-o"], "s.yaml/report"),
])
def test_outputs_that_cannot_be_written_are_bad_input(study_dir, command, output):
    result = invoke(*command, output)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: -o:") and output in result.stderr
    assert "Traceback" not in result.stderr and "failed:" not in result.stderr


def test_export_allow_pruned_and_spec_argument(study_dir):
    result = invoke("export", "s.yaml", "--trial", "1", "-o", "pruned.py")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "trial 1 was pruned" in result.stderr and "--allow-pruned" in result.stderr
    assert not (study_dir / "pruned.py").exists()
    result = invoke("export", "s.yaml", "--trial", "1", "--allow-pruned", "-o", "pruned.py")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "trial: 1\n    state: PRUNED" in (study_dir / "pruned.py").read_text()
    # Storage and study from the SPEC; --study still overrides it, --storage too.
    result = invoke("export", "s.yaml", "-o", "best.py")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "study: tiny\n    trial: 0\n    state: COMPLETE" in (study_dir / "best.py").read_text()
    result = invoke("export", "s.yaml", "--study", "other", "-o", "other.py")
    assert result.exit_code == 2 and "no study 'other'" in result.stderr
    result = invoke("export", "s.yaml", "--storage", "sqlite:///elsewhere.db", "-o", "x.py")
    assert result.exit_code == 2 and "no SQLite database at elsewhere.db" in result.stderr
    result = invoke("export", "-o", "x.py", "--storage", "sqlite:///studies/tiny.db")
    assert result.exit_code == 2 and "give --study NAME (or a SPEC" in result.stderr


def test_report_of_a_spec(study_dir):
    result = invoke("report", "s.yaml", "-o", "rep")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "# Study `tiny`" in (study_dir / "rep" / "summary.md").read_text()
    result = invoke("report", "-o", "rep2")
    assert result.exit_code == 2 and "give --storage URL (or a SPEC" in result.stderr


def test_dashboard_takes_its_storage_from_a_spec(tmp_path):
    """A spec never run: its default storage does not exist, so nothing is served (exit 2)."""
    write_spec(tmp_path / "s.yaml", TINY_SPEC)
    r = subprocess.run([sys.executable, "-m", "bkdsearch.cli", "dashboard", "s.yaml", "--port", "1"],
                       capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "no SQLite database at studies/tiny.db" in r.stderr
    assert not (tmp_path / "studies").exists()


def test_devices_option_is_checked(study_dir):
    count = torch.cuda.device_count()
    for devices in (str(count), f"cuda:{count}", "gpu", "0,,1"):
        result = invoke("run", "s.yaml", "--devices", devices)
        assert result.exit_code == 2, (devices, result.stdout, result.stderr)
        assert "--devices:" in result.stderr
    if not count:
        result = invoke("run", "s.yaml", "--devices", "cuda")
        assert result.exit_code == 2 and "CUDA is not available" in result.stderr
    assert len(optuna.load_study(study_name="tiny", storage="sqlite:///studies/tiny.db").trials) == 2


COMMANDS = ["validate", "schema", "run", "train", "teacher", "status", "export", "dashboard", "report", "flops"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    example = result.stdout.split("Example:", 1)[1].strip().splitlines()[0]
    assert example.startswith(f"bkdsearch {command}")


def test_dashboard_and_flops_options_have_help():
    text = invoke("dashboard", "--help").stdout
    assert "Address to listen on" in text and "TCP port" in text
    assert "Fix a parameter for the table" in invoke("flops", "--help").stdout


# --------------------------------------------------------------------------- the summary `run` ends with


def test_run_ends_with_a_summary_and_the_exact_next_commands(tmp_path, monkeypatch):
    """A run that fills the cap: the study's and this worker's counts, the best trial with
    units, the cap reached and how to raise it, the next commands on the same SPEC; a second
    run finds the cap already reached and shows the teacher's accuracy now recorded, its
    commands keep the --storage/--study given. The commands printed work as printed."""
    import shlex

    from workerkit import quick_spec

    quick_spec(tmp_path / "s.yaml")
    r = bkd("run", "s.yaml", "--quiet", "--devices", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    best = max(study.trials, key=lambda t: t.value)
    summary = r.stdout[r.stdout.index("summary of study tiny"):].splitlines()
    assert summary == [
        "summary of study tiny: 2 complete, 0 pruned, 0 failed",
        "this worker: 2 complete, 0 pruned, 0 failed",
        f"best trial {best.number}:",
        f"  val_acc {best.value:.2f}%",
        f"  test accuracy {best.user_attrs['test_acc']:.2f}%",
        f"  train.lr={best.params['train.lr']:.4g}, train.momentum={best.params['train.momentum']:.4g}",
        "the cap of 2 finished trials is reached",
        "to train more, raise it (--n-trials larger than 2):",
        "  bkdsearch run s.yaml --n-trials 4",
        "next:",
        "  bkdsearch status s.yaml",
        "  bkdsearch dashboard s.yaml",
        "  bkdsearch report s.yaml -o reports/tiny",
        "  bkdsearch export s.yaml --trial best -o train_best.py",
    ], r.stdout
    assert all(len(line) <= 80 for line in summary), r.stdout

    study.set_user_attr("teacher_test_acc", 91.5)
    r = bkd("run", "s.yaml", "--quiet", "--devices", "cpu", "--storage", "sqlite:///studies/tiny.db",
            "--study", "tiny", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "this worker: 0 complete, 0 pruned, 0 failed\n" in out
    assert f"  test accuracy {best.user_attrs['test_acc']:.2f}% (teacher 91.50%)\n" in out
    assert "the cap of 2 finished trials was already reached: nothing was run\n" in out
    given = "s.yaml --storage sqlite:///studies/tiny.db --study tiny"
    assert f"  bkdsearch run {given} --n-trials 4\n" in out
    commands = [line.strip() for line in out.splitlines() if line.startswith("  bkdsearch ")]
    assert commands[1:] == [f"bkdsearch status {given}", f"bkdsearch dashboard {given}",
                            f"bkdsearch report {given} -o reports/tiny",
                            f"bkdsearch export {given} --trial best -o train_best.py"]
    monkeypatch.chdir(tmp_path)
    for line in (commands[1], commands[4]):
        result = invoke(*shlex.split(line)[1:])
        assert result.exit_code == 0, (line, result.stdout, result.stderr)
    assert "trial: " + str(best.number) in (tmp_path / "train_best.py").read_text()


def test_run_summary_of_several_objectives_with_units_and_no_password(monkeypatch):
    """Several objectives: the Pareto trial with the highest val_acc, each objective with its
    unit; a cap not reached says how to go on; a storage password never shows."""
    monkeypatch.setenv("PATH", ENV["PATH"])  # bkdsearch on PATH: printed as plain `bkdsearch`
    from bkdsearch.search import WorkerReport
    from bkdsearch.summary import run_summary

    study = optuna.create_study(study_name="multi", directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(["val_acc", "train_gflops", "student_mflops"])
    study.set_user_attr("teacher_test_acc", 93.25)
    dist = {"blockkd.tau": optuna.distributions.FloatDistribution(1, 8)}
    for values, tau in (([70.5, 1.5, 40.0], 2.0), ([72.25, 3.25, 41.5], 4.0), ([71.0, 4.0, 45.0], 6.0)):
        study.add_trial(optuna.trial.create_trial(values=values, params={"blockkd.tau": tau}, distributions=dist,
                                                  user_attrs={"test_acc": values[0] - 1}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    storage = "postgresql+psycopg://bob:s3cr%40t@db.example:5432/studies"
    lines = run_summary(study, WorkerReport(complete=2, pruned=1, failed=0), cap=6, spec_path="specs/a b.yaml",
                        storage=storage, study_name="multi", n_trials=6)
    text = "\n".join(lines)
    assert lines[0] == "summary of study multi: 3 complete, 1 pruned, 0 failed"
    assert lines[1] == "this worker: 2 complete, 1 pruned, 0 failed"
    assert lines[2] == "best trial 1 (highest val_acc on the Pareto front):"
    assert lines[3] == "  val_acc 72.25%, train_gflops 3.25 GFLOPs, student_mflops 41.5 MFLOPs"
    assert lines[4] == "  test accuracy 71.25% (teacher 93.25%)"
    assert lines[5] == "  blockkd.tau=4"
    assert "4 of the cap of 6 trials finished; to go on:" in lines
    given = "'specs/a b.yaml' --storage 'postgresql+psycopg://bob:***@db.example:5432/studies' --study multi"
    assert f"  bkdsearch run {given} --n-trials 6" in lines
    assert f"  bkdsearch export {given} --trial best -o train_best.py" in lines
    assert lines[-1] == "(*** stands for the storage password)"
    assert "s3cr" not in text
    assert all(len(line) <= 80 for line in lines if "://" not in line), text
