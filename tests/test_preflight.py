"""Preflight: what every trial needs is checked before the study is opened (``run``) or the
loop starts (``train``, ``teacher``); each refusal is exit 2 with the field and the fix,
and leaves no trial row behind."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_SPEC, write_spec

from bkdsearch.cli import main
from bkdsearch.errors import BadInput
from bkdsearch.preflight import PreflightError, check_study_name, parse_devices, preflight
from bkdsearch.spec import Spec
from bkdsearch.zoo import create_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def bkd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bkdsearch.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def trial_count(db: Path) -> int:
    """Trials of every study in the SQLite file ``db`` (0 when there is no file)."""
    if not db.exists():
        return 0
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    return sum(len(optuna.load_study(study_name=s.study_name, storage=storage).trials)
               for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def spec_with(tmp_path: Path, **changes) -> dict:
    spec = copy.deepcopy(TINY_SPEC)
    spec["search"] = {"n_trials": 1, "pruner": "none"}
    spec["train"]["epochs"] = 1
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            spec[section][field] = value
        else:
            spec[section] = value
    return spec


class Evil:
    """Unpickling it would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- run: nothing written


def test_run_with_missing_dataset_exits_2_and_writes_no_trial(tmp_path):
    """CIFAR-10 under a wrong root with download off: refused before the study exists."""
    spec = spec_with(tmp_path, data={"dataset": "cifar10", "root": str(tmp_path / "no-data"), "download": False})
    r = bkd("run", write_spec(tmp_path / "s.yaml", spec), "--quiet", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"data: data root {tmp_path / 'no-data'} does not exist" in r.stderr and "download: true" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "studies" / "tiny.db").exists()  # open_study never ran
    assert trial_count(tmp_path / "studies" / "tiny.db") == 0


def test_run_resuming_a_study_with_a_refused_teacher_adds_no_trial_and_runs_no_code(tmp_path):
    """A real malicious pickle as the teacher: refused weights-only, the command it carries
    never runs, the existing study gains no trial, torch's advice to load unsafely is not shown."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil(marker)}, evil)
    db = tmp_path / "studies" / "tiny.db"
    db.parent.mkdir()
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{db}")  # an existing study to resume
    spec = spec_with(tmp_path, teacher__checkpoint=str(evil))
    r = bkd("run", write_spec(tmp_path / "s.yaml", spec), "--quiet", cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "teacher.checkpoint: refused to load" in r.stderr and "nothing was run" in r.stderr
    assert not marker.exists()
    assert "weights_only=False" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert trial_count(db) == 0


def test_refused_pickle_is_refused_by_train_and_teacher_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(Evil(marker), evil)
    spec_file = write_spec(tmp_path / "s.yaml", spec_with(tmp_path, teacher__checkpoint=str(evil)))
    for args in (["train", spec_file, "--out", str(tmp_path / "run")], ["teacher", spec_file]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert "teacher.checkpoint: refused to load" in result.stderr
        assert "weights_only=False" not in result.stdout + result.stderr
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # the refusal removes the folder it probed


def test_teacher_of_the_wrong_architecture_is_named(tmp_path, monkeypatch):
    """A resnet8 state dict given as the resnet14 teacher: exit 2 naming both and the keys."""
    wrong = tmp_path / "r8.pt"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, wrong)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", write_spec(tmp_path / "s.yaml", spec_with(
        tmp_path, teacher__checkpoint=str(wrong))), "--quiet"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert f"teacher.checkpoint: {wrong} is not a resnet14 with 10 classes" in result.stderr
    assert "does not fit" in result.stderr and "missing" in result.stderr  # the keys it lacks
    assert trial_count(tmp_path / "studies" / "tiny.db") == 0


def test_teacher_trained_for_another_class_count_is_named(tmp_path):
    """The right architecture but 100 classes for a 10-class dataset: the shapes are named."""
    wrong = tmp_path / "r14-100.pt"
    torch.save(create_model("resnet14", num_classes=100).state_dict(), wrong)
    with pytest.raises(PreflightError) as refused:
        preflight(Spec.model_validate(spec_with(tmp_path, teacher__checkpoint=str(wrong))))
    (field, message), = refused.value.problems
    assert field == "teacher.checkpoint" and "resnet14 with 10 classes" in message
    assert "fc.weight: checkpoint (100, 64) vs model (10, 64)" in message


def test_cuda_device_on_a_machine_without_one_exits_2_before_the_study(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    spec_file = write_spec(tmp_path / "s.yaml", spec_with(tmp_path, runtime={"device": "cuda"}))
    result = CliRunner().invoke(main, ["run", spec_file, "--quiet"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "runtime.device: CUDA is not available" in result.stderr and "use cpu or auto" in result.stderr
    assert not (tmp_path / "studies").exists()  # the probed folders went again
    # --devices and train's --device are refused the same way.
    for args, needle in ((["run", spec_file, "--devices", "cuda"], "--devices: cuda: CUDA is not available"),
                         (["run", spec_file, "--devices", "0"], "--devices: '0': CUDA is not available"),
                         (["train", spec_file, "--device", "cuda:0"], "--device: 'cuda:0': CUDA is not available")):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert needle in result.stderr
    assert trial_count(tmp_path / "studies" / "tiny.db") == 0


def test_gpu_index_that_does_not_exist_is_refused_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec_file = write_spec(tmp_path / "s.yaml", spec_with(tmp_path))
    for devices in ("99", "cuda:99", "0,99", "cpu,0", "0,0" if torch.cuda.device_count() else "x"):
        result = CliRunner().invoke(main, ["run", spec_file, "--devices", devices])
        assert result.exit_code == 2, (devices, result.stdout, result.stderr)
        assert "--devices:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "studies").exists()


def test_unwritable_artifact_dir_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", write_spec(tmp_path / "s.yaml", spec_with(tmp_path)),
                                       "--artifact-dir", "/proc/forbidden"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "--artifact-dir: cannot create /proc/forbidden/tiny" in result.stderr
    assert trial_count(tmp_path / "studies" / "tiny.db") == 0


def test_env_artifact_dir_and_train_out_are_probed(tmp_path, monkeypatch):
    """A file where the artifact folder (from the environment) or --out should be."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("BKDSEARCH_ARTIFACT_DIR", str(tmp_path / "afile"))
    spec_file = write_spec(tmp_path / "s.yaml", spec_with(tmp_path))
    result = CliRunner().invoke(main, ["run", spec_file])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "BKDSEARCH_ARTIFACT_DIR: cannot create" in result.stderr
    result = CliRunner().invoke(main, ["train", spec_file, "--out", str(tmp_path / "afile" / "run")])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert f"--out: cannot create {tmp_path / 'afile' / 'run'} (Not a directory)" in result.stderr
    with pytest.raises(PreflightError, match="afile is a file, not a folder"):  # what click lets through
        preflight(Spec.model_validate(spec_with(tmp_path)), folders={"--out": tmp_path / "afile"})


def test_every_problem_is_reported_at_once(tmp_path):
    spec = spec_with(tmp_path, data={"dataset": "cifar10", "root": str(tmp_path / "nothing")},
                     student={"arch": "resnet8", "checkpoint": str(tmp_path / "missing.pt")},
                     runtime={"device": "cuda:99"})
    with pytest.raises(PreflightError) as refused:
        preflight(Spec.model_validate(spec), folders={"--out": "/proc/forbidden"}, search=True)
    assert isinstance(refused.value, BadInput)
    fields = [f for f, _ in refused.value.problems]
    assert fields == ["runtime.device", "--out", "data", "student.checkpoint"]
    text = str(refused.value)
    assert text.startswith("4 problems") and f"checkpoint not found: {tmp_path / 'missing.pt'}" in text


def test_a_search_needs_a_validation_split(tmp_path):
    spec = Spec.model_validate(spec_with(tmp_path, data={**TINY_SPEC["data"], "val_fraction": 0.0}))
    with pytest.raises(PreflightError, match="data.val_fraction: is 0"):
        preflight(spec, search=True)
    preflight(spec, devices={}, search=False)  # one run (train) may do without


def test_data_that_cannot_fill_one_batch_is_refused(tmp_path):
    """The data opens, but the training split is smaller than one batch: every trial would fail."""
    data = copy.deepcopy(TINY_SPEC["data"])
    data["batch_size"] = 5000
    with pytest.raises(PreflightError) as refused:
        preflight(Spec.model_validate(spec_with(tmp_path, data=data)))
    assert refused.value.problems[0][0] == "data"


def test_image_folder_layout_is_checked(tmp_path):
    root = tmp_path / "images"
    (root / "train" / "cat").mkdir(parents=True)
    spec = spec_with(tmp_path, data={"dataset": "imagefolder", "root": str(root)},
                     teacher={"arch": "resnet18"}, student={"arch": "resnet18"}, method="ce")
    with pytest.raises(PreflightError) as refused:
        preflight(Spec.model_validate(spec))
    (field, message), = refused.value.problems
    assert field == "data" and "expected layout" in message


def test_good_spec_passes_and_searched_values_are_not_checked(tmp_path, teacher_ckpt):
    """A partition that one searched value cannot build stays that trial's failure."""
    spec = spec_with(tmp_path, teacher__checkpoint=teacher_ckpt)
    spec["partitions"] = {"stage": "stage_aligned", "fine": {"uniform": 4}}
    spec["blockkd"] = {"partition": {"choice": ["stage", "fine"]}, "tau": {"float": [1.0, 8.0]}}
    preflight(Spec.model_validate(spec), folders={"studies": tmp_path / "studies"}, search=True)
    assert [p.name for p in (tmp_path / "studies").iterdir()] == []  # the probe file is gone


def test_no_checkpoint_means_the_recipe_and_a_cached_teacher_are_checked(tmp_path):
    """Without teacher.checkpoint the teacher is trained (recipe enough); a corrupt cached
    teacher is named with the fix."""
    from bkdsearch.spec import Defaults, resolve
    from bkdsearch.teacher import cached_teacher_path

    spec = Spec.model_validate(spec_with(tmp_path))
    cache = tmp_path / "teachers"
    preflight(spec, teacher_cache=cache)  # nothing cached: the recipe will train it
    # Where teacher_weights looks for a trial's teacher (any trial: the teacher is not searched).
    cached = cached_teacher_path(resolve(spec, Defaults()), cache)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(PreflightError, match="cached teacher: .*delete it to train the teacher again"):
        preflight(spec, teacher_cache=cache)


# --------------------------------------------------------------------------- names and devices


@pytest.mark.parametrize("name", ["", ".", "..", "../../escape", "a/b", "a\\b", "x" * 65, "sp ace", "tab\t"])
def test_bad_study_names(name):
    with pytest.raises(PreflightError, match="letters, digits"):
        check_study_name(name)


@pytest.mark.parametrize("name", ["tiny", "r110_r32", "run-2.v1", "x" * 64, "..a"])
def test_good_study_names(name):
    assert check_study_name(name) == name


def test_parse_devices_spellings():
    assert parse_devices("cpu") == [torch.device("cpu")]
    auto = parse_devices("auto")
    assert auto == ([torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())] or [torch.device("cpu")])
    if torch.cuda.device_count():
        assert parse_devices("cuda:0") == parse_devices("0") == [torch.device("cuda:0")]
        assert parse_devices("cuda") == auto
    for bad in ("", "gpu", "0,,1", "-1", "1.5"):
        with pytest.raises(PreflightError):
            parse_devices(bad)
