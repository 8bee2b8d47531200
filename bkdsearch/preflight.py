"""Checks made once before a loop starts: what every trial (or the one run of ``train`` and
``teacher``) needs, so that a missing dataset, a refused checkpoint, a folder that cannot
be written or a device that does not exist is one clear refusal (exit 2) instead of the
same failure in every trial.

:func:`preflight` checks, the way the run itself will use them:

- the dataset opens for train, validation and test (the real :func:`build_data` on the
  CPU: in-memory arrays loaded, image folders indexed, the validation split carved);
- the teacher's checkpoint exists and loads (weights-only) into its architecture with the
  dataset's class count; without a checkpoint, the CE run that trains the teacher can be
  built, and a cached teacher, when there is one, loads;
- the student's checkpoint likewise, when given;
- each folder the run writes to can be created and written (a probe file, removed again);
- each requested device exists.

Values that a search varies are never checked here: a configuration that only some trials
reach (a partition one searched value cannot build) stays a failure of those trials.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInput

if TYPE_CHECKING:
    import torch

STUDY_NAME_RULE = "1 to 64 letters, digits, '-', '_' or '.', not '.' or '..' (it names folders)"
_STUDY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_INDEX = re.compile(r"[0-9]+")
_DEVICE_FORMS = "auto, cpu, cuda, cuda:N or a GPU index N"


class PreflightError(BadInput):
    """What a run needs is missing or broken; one ``(field, message)`` per problem, each
    message saying what is wrong and how to fix it (the CLI exits with 2)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__(self.format())

    def format(self) -> str:
        """Return the problems as text: the single one on one line, several one per line."""
        if len(self.problems) == 1:
            field, message = self.problems[0]
            return f"{field}: {message}"
        lines = [f"{len(self.problems)} problems, nothing was started:"]
        lines += [f"  {field}: {message}" for field, message in self.problems]
        return "\n".join(lines)


# --------------------------------------------------------------------------- names


def check_study_name(name: str, field: str = "--study") -> str:
    """Return ``name`` when it is a valid study name (:data:`STUDY_NAME_RULE`).

    Raises:
        PreflightError: ``name`` breaks the rule (empty, too long, a path separator...).
    """
    if not _STUDY_NAME.fullmatch(name) or name in (".", ".."):
        raise PreflightError([(field, f"{name!r} is not a study name: use {STUDY_NAME_RULE}")])
    return name


# --------------------------------------------------------------------------- devices


def _no_cuda() -> str:
    import torch

    return f"CUDA is not available on this machine (torch {torch.__version__} sees no GPU)"


def device_problem(name: str | torch.device | None) -> str | None:
    """Return why device ``name`` cannot be used here, or None when it can (``auto`` and
    ``cpu`` always can; ``cuda``, ``cuda:N`` and a bare index ``N`` need that GPU)."""
    import torch

    if name is None:
        return None
    text = str(name).strip()
    if text in ("auto", "cpu"):
        return None
    fix = "use cpu or auto"
    count = torch.cuda.device_count()
    if text == "cuda":
        return None if count else f"{_no_cuda()}; {fix}"
    index = text.removeprefix("cuda:")
    if _INDEX.fullmatch(index):
        if int(index) < count:
            return None
        if not count:
            return f"{text!r}: {_no_cuda()}; {fix}"
        return f"{text!r}: no GPU {int(index)} ({count} visible: cuda:0..cuda:{count - 1})"
    return f"unknown device {text!r}: give {_DEVICE_FORMS}"


def _device_indices(text: str) -> tuple[list[tuple[int, str]], list[str]]:
    """((GPU index, as given), problems) of ``--devices`` GPU indices and ranges, read without torch and
    without expanding a range past :data:`~bkdsearch.spec.limits.MAX_GPU_INDEX` (a typo such as
    ``0-9999999`` is refused at once, not listed)."""
    from .spec.limits import MAX_GPU_INDEX

    problems: list[str] = []
    indices: list[tuple[int, str]] = []
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > MAX_GPU_INDEX + 1:
        return [], [f"{len(parts)} devices given, over the limit of {MAX_GPU_INDEX + 1}"]
    for part in parts:
        lo, dash, hi = part.partition("-")
        if dash and _INDEX.fullmatch(lo) and _INDEX.fullmatch(hi) and int(lo) <= int(hi):
            if int(hi) > MAX_GPU_INDEX:
                problems.append(f"range {part!r} goes past GPU {MAX_GPU_INDEX}, the limit of a GPU index")
                continue
            found = [str(i) for i in range(int(lo), int(hi) + 1)]
        else:
            found = [part]
        for one in found:
            index = one.removeprefix("cuda:")
            if not _INDEX.fullmatch(index):
                problems.append(f"{one!r} is not a device: give auto, cpu, cuda, or GPU indices such as 0,1 "
                                "(or cuda:0,cuda:1) and ranges such as 0-3")
            elif len(index) > 4 or int(index) > MAX_GPU_INDEX:
                problems.append(f"{one!r}: GPU index over the limit of {MAX_GPU_INDEX}")
            elif int(index) in [i for i, _ in indices]:
                problems.append(f"GPU {int(index)} is given twice; use --trials-per-device K to train K trials "
                                "at once on one GPU")
            else:
                indices.append((int(index), one))
    return indices, problems


def parse_devices(option: str) -> list[torch.device]:
    """Return the devices of ``--devices``: ``auto`` (every GPU, else the CPU), ``cpu``,
    ``cuda`` (every GPU) or GPU indices ``0,1`` (also written ``cuda:0,cuda:1``) and ranges
    ``0-3`` (``0-3,6`` mixes both); indices are at most
    :data:`~bkdsearch.spec.limits.MAX_GPU_INDEX`.

    Raises:
        PreflightError: a part that is no device, an index over the limit, a GPU that does
            not exist (or no CUDA at all), or a GPU given twice.
    """
    text = option.strip()
    indices, problems = ([], []) if text in ("auto", "cpu", "cuda") else _device_indices(text)
    if problems:  # checked before torch is imported: a bad option is refused at once
        raise PreflightError([("--devices", p) for p in problems])
    import torch

    count = torch.cuda.device_count()
    every_gpu = [torch.device(f"cuda:{i}") for i in range(count)]
    if text == "auto":
        return every_gpu or [torch.device("cpu")]
    if text == "cpu":
        return [torch.device("cpu")]
    if text == "cuda":
        if not count:
            raise PreflightError([("--devices", f"cuda: {_no_cuda()}; use --devices cpu (or auto)")])
        return every_gpu
    missing = [(i, given) for i, given in indices if i >= count]
    if missing:
        raise PreflightError([("--devices", f"{given!r}: " + (f"{_no_cuda()}; use --devices cpu (or auto)" if not count
                                                              else f"no GPU {i} ({count} visible: 0..{count - 1})"))
                              for i, given in missing[:8]])
    return [torch.device(f"cuda:{i}") for i, _ in indices]


# --------------------------------------------------------------------------- folders


def _probe_folder(folder: Path, created: list[Path]) -> str | None:
    """Create ``folder`` (noting in ``created`` the folders made) and write and remove a
    probe file in it; return why that failed, or None."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{folder} is a file, not a folder; choose a folder"
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return f"cannot create {folder} ({getattr(exc, 'strerror', None) or exc}); choose a folder you can write to"
    finally:
        created.extend(p for p in missing if p.is_dir())
    if not folder.is_dir():
        return f"{folder} is not a folder; choose a folder"
    probe = folder / f".bkdsearch-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"cannot write into {folder} ({exc.strerror or exc}); choose a folder you can write to"
    return None


def check_output(path: str | Path, field: str, *, folder: bool) -> Path:
    """Return ``path`` when it can be written: an output file (``folder=False``) or an
    output folder, creating nothing (a probe file is written into, and removed from, the
    nearest folder that exists).

    Raises:
        PreflightError: the path (or a part of it) is of the wrong kind, or the nearest
            existing folder cannot be written.
    """
    path = Path(path)
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise PreflightError([(field, f"{path} exists and is not a {kind}; give a {kind} path")])
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise PreflightError([(field, f"{existing} is a file, so {path} cannot be created; give another path")])
    problem = _probe_folder(existing, [])
    if problem:
        raise PreflightError([(field, f"cannot write {path}: {problem}")])
    return path


def output_error(exc: OSError, path: str | Path, field: str) -> PreflightError | None:
    """Return the bad-input error for ``exc`` when it is about writing ``path`` (or
    something inside it), else None (another failure, left as it is)."""
    name = getattr(exc, "filename", None)
    if name is None:
        return None
    target, culprit = Path(path).absolute(), Path(os.fsdecode(name)).absolute()
    if culprit != target and target not in culprit.parents and culprit not in target.parents:
        return None
    return PreflightError([(field, f"cannot write {culprit} ({exc.strerror or exc}); "
                                   "choose a place you can write to")])


# --------------------------------------------------------------------------- weights


def _not_a_file(file: Path) -> str | None:
    """Why ``file`` cannot be read as a file ("not found: P", "P is a directory", "P is a
    symbolic link loop"...), or None when it is a regular file."""
    import errno
    import stat

    from .spec.loading import file_kind

    try:
        mode = os.stat(file).st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"not found: {file}" + (" (a symbolic link to nothing)" if file.is_symlink() else "")
        if exc.errno == errno.ELOOP:
            return f"{file} is a symbolic link loop (it never reaches a file)"
        return f"{file} cannot be read: {exc.strerror or exc}"
    except ValueError as exc:  # a NUL in the path
        return f"{file!r} is not a usable path: {exc}"
    return None if stat.S_ISREG(mode) else f"{file} is {file_kind(mode)}, not a weights file"


def _non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors of ``state`` holding a nan or an inf."""
    import torch

    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _weights_problem(role: str, arch: str, path: str, num_classes: int | None, fix: str) -> str | None:
    """Why the ``role`` (teacher, student) checkpoint at ``path`` does not load into
    ``arch``, or None when it does."""
    import torch

    from .core.engine.models import create_model
    from .core.engine.weights import check_fits, read_state_dict
    from .errors import WeightsError

    file = Path(path)
    unusable = _not_a_file(file)
    if unusable:
        return f"{role} checkpoint {unusable}; {fix}"
    try:
        state = read_state_dict(file)  # weights-only: a pickle that would run code is refused
    except WeightsError as exc:
        return f"{exc}; {fix}"
    bad = _non_finite_tensors(state)
    if bad:
        return (f"{file} holds non-finite weights (nan or inf) in {len(bad)} tensor(s), e.g. {', '.join(bad[:3])}: "
                f"a run distilling from it would be NaN from its first step; {fix}")
    if num_classes is None:  # the class count depends on data that did not open
        return None
    try:
        # fork_rng: building the model draws from torch's global generator; leave it as it was.
        with torch.random.fork_rng(devices=[]):
            model = create_model(arch, num_classes=num_classes)
    except KeyError as exc:
        return f"{exc.args[0] if exc.args else exc}; {fix}"
    try:
        check_fits(model, state)  # what load_weights checks, then loads
        model.load_state_dict(state, strict=True)
    except (WeightsError, RuntimeError) as exc:
        return f"{file} is not a {arch} with {num_classes} classes: {exc}; {fix}"
    return None


# --------------------------------------------------------------------------- the run's needs


def _methods(source: Any) -> list[str]:
    from .spec import Choice

    method = source.method
    return [str(m) for m in method.choice] if isinstance(method, Choice) else [str(method)]


def _teacher_run(source: Any) -> Any:
    """The RunConfig whose teacher is ``source``'s (a Spec or a RunConfig): what
    :func:`bkdsearch.teacher.teacher_run_config` and the teacher cache read."""
    from .spec import ModelConfig, Recipe, RunConfig, Spec

    if not isinstance(source, Spec):
        return source
    assert source.teacher is not None
    return RunConfig(name=source.name, seed=source.seed, method="kd", data=source.data,
                     teacher=ModelConfig(arch=source.teacher.arch, checkpoint=source.teacher.checkpoint),
                     teacher_recipe=source.teacher.recipe, student=source.student, train=Recipe(epochs=1),
                     runtime=source.runtime)


def _train_fractions(source: Any) -> list[tuple[str, float]]:
    """(field, share of the training split) of every fraction ``source``'s runs train on below 1:
    ``data.train_fraction`` and, for a search, ``search.fidelity.train_fraction``."""
    fractions = [("data.train_fraction", source.data.train_fraction)]
    fidelity = getattr(getattr(source, "search", None), "fidelity", None)
    if fidelity is not None:
        fractions.append(("search.fidelity.train_fraction", fidelity.train_fraction))
    return [(field, f) for field, f in fractions if f < 1.0]


def _fraction_problems(fractions: list[tuple[str, float]], n_train: int, batch_size: int) -> list[tuple[str, str]]:
    """What each ``(field, fraction)`` keeps of ``n_train`` training samples, when that is
    not at least one full batch (``keep_fraction`` keeps ``round(n_train * fraction)``)."""
    problems = []
    for field, fraction in fractions:
        kept = round(n_train * fraction)
        if kept < max(1, batch_size) or kept >= n_train:
            problems.append((field, f"{fraction:g} keeps {kept} of the {n_train} training samples: not one full "
                                    f"batch of {batch_size}; raise {field} (to at least "
                                    f"{min(1.0, batch_size / n_train):.3g}) or lower data.batch_size"))
    return problems


def _data_problems(data: Any, seed: int, search: bool,
                   fractions: list[tuple[str, float]]) -> tuple[int | None, list[tuple[str, str]]]:
    """(class count or None, problems) of the data section, opened as the trainer opens it
    (the whole training split; each of ``fractions`` is then checked to keep a full batch)."""
    from .core.engine.data import build_data, dataset_info
    from .core.recipe.data import SyntheticConfig
    from .errors import DataError

    problems: list[tuple[str, str]] = []
    if search and data.val_fraction <= 0:
        problems.append(("data.val_fraction", "is 0, but the search selects on validation accuracy; "
                                              "set data.val_fraction > 0 (e.g. 0.1)"))
    try:
        synthetic = SyntheticConfig.from_dict(data.synthetic) if data.dataset == "synthetic" else None
        num_classes = dataset_info(data.dataset, synthetic=synthetic).num_classes
    except (TypeError, ValueError) as exc:
        return None, [*problems, ("data.synthetic" if data.dataset == "synthetic" else "data.dataset", str(exc))]
    try:
        bundle = build_data(data.dataset, root=data.root, download=data.download, val_fraction=data.val_fraction,
                            batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, seed=seed,
                            device="cpu", augment=data.augment, num_workers=data.num_workers,
                            synthetic=data.synthetic, image_size=getattr(data, "image_size", None) or 224,
                            data_seed=data.split_seed)
    except DataError as exc:
        problems.append(("data", str(exc)))
    except ValueError as exc:  # a validation split that comes out empty, say
        problems.append(("data", f"{exc}; fix data.val_fraction or data.batch_size"))
    else:
        num_classes = num_classes or bundle.num_classes
        problems += _fraction_problems(fractions, bundle.train.num_samples, data.batch_size)
    return num_classes, problems


def preflight(source: Any, *, devices: Mapping[str, str | torch.device | None] | None = None,
              folders: Mapping[str, str | Path] | None = None, teacher_cache: str | Path | None = None,
              search: bool = False) -> None:
    """Check, before the first trial (``run``) or the loop (``train``, ``teacher``), what
    every run of ``source`` needs; return None when all is there.

    Args:
        source: a :class:`bkdsearch.spec.Spec` (a search: its searched values are not
            checked) or a resolved :class:`bkdsearch.spec.RunConfig`.
        devices: the devices the runs will use, by the name the user knows them by (an
            option, a spec field); None: ``{"runtime.device": source.runtime.device}``.
        folders: folders the runs write to, by the name the user knows them by (an option,
            a spec field): each is created when missing and must take a file.
        teacher_cache: where CE-trained teachers are cached; a cached teacher that is there
            (for a teacher without checkpoint) must load.
        search: ``source`` is searched (``run``): a validation split is required.

    Raises:
        PreflightError: one entry per problem, each naming the field or option and the fix.
    """
    from .teacher import cached_teacher_path, teacher_run_config

    problems: list[tuple[str, str]] = []
    wanted = {"runtime.device": source.runtime.device} if devices is None else devices
    for label, device in wanted.items():
        problem = device_problem(device)
        if problem:
            problems.append((label, problem))

    created: list[Path] = []
    for label, folder in (folders or {}).items():
        problem = _probe_folder(Path(folder), created)
        if problem:
            problems.append((label, problem))

    num_classes, data_problems = _data_problems(source.data, source.seed, search, _train_fractions(source))
    problems += data_problems

    teacher = source.teacher
    if teacher is not None and any(m != "ce" for m in _methods(source)):
        if teacher.checkpoint:
            problem = _weights_problem("teacher", teacher.arch, teacher.checkpoint, num_classes,
                                       f"give teacher.checkpoint a state dict of {teacher.arch} trained on "
                                       f"{source.data.dataset}, or remove it to train the teacher")
            if problem:
                problems.append(("teacher.checkpoint", problem))
        else:
            try:
                run = _teacher_run(source)
                teacher_run_config(run)
            except (TypeError, ValueError) as exc:
                problems.append(("teacher.recipe", f"the teacher cannot be trained with it: {exc}"))
            else:
                # The cache key reads the data's content: only once the data opened.
                known = teacher_cache is not None and not data_problems
                cached = cached_teacher_path(run, teacher_cache) if known else None
                if cached is not None and cached.is_file():
                    problem = _weights_problem("cached teacher", teacher.arch, str(cached), num_classes,
                                               "delete it to train the teacher again")
                    if problem:
                        problems.append(("cached teacher", problem))
    student = source.student
    if student.checkpoint:
        problem = _weights_problem("student", student.arch, student.checkpoint, num_classes,
                                   f"give student.checkpoint a state dict of {student.arch} trained on "
                                   f"{source.data.dataset}, or remove it to start from scratch")
        if problem:
            problems.append(("student.checkpoint", problem))

    if problems:
        # Leave no empty folder behind a refusal (deepest first).
        for folder in sorted(created, key=lambda p: len(p.absolute().parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise PreflightError(problems)
