"""The commands that run trials (``run``, ``confirm``): their shared options, and the checked,
opened study with the workers that train on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape

from ..progress import console_log
from ..spec.limits import MAX_TIMEOUT_S
from ..urls import redact
from .common import STUDIES, STUDY_HELP, check_storage_url, load_spec_or_exit, out, study_name_of
from .environment import check_environment


class Seconds(click.ParamType):
    """A timeout in seconds: a finite number in (0, :data:`~bkdsearch.spec.limits.MAX_TIMEOUT_S`]
    (``nan`` and ``inf`` are refused, not taken as "no timeout")."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Return ``value`` as seconds.

        Raises:
            click.BadParameter: not a number, not finite, not > 0 or over the limit (exit 2).
        """
        import math

        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a finite number of seconds > 0", param, ctx)
        if seconds > MAX_TIMEOUT_S:
            self.fail(f"{value!r} seconds is over the limit of {MAX_TIMEOUT_S:g} (a year)", param, ctx)
        return seconds

if TYPE_CHECKING:  # imported when a command runs (the CLI starts fast)
    from ..search.worker import WorkerReport
    from ..spec import Spec


def fixed_spec(spec: Spec, sets: tuple[str, ...]) -> Spec:
    """``spec`` with the ``run --set`` values fixed in it (what every trial uses and the study
    records).

    Raises:
        SpecError: an unknown key, an invalid value, or a key the spec searches (exit 2).
    """
    from ..spec import SpecError, parse_overrides, searched
    from ..spec.loading import with_overrides

    overrides = parse_overrides(list(sets))
    if not overrides:
        return spec
    space = searched(spec)
    refused = [(k, "searched by the spec: `run --set` fixes values only (the search chooses this one); "
                   "to fix it, give it a fixed value in the spec", None) for k in overrides if k in space]
    if refused:
        raise SpecError(refused)
    return with_overrides(spec, overrides)


def worker_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options of commands that run trials (``run``, ``confirm``)."""
    options = [
        click.argument("spec_path", metavar="SPEC"),
        click.option("--storage", default=None,
                     help="SQLAlchemy URL (default: the spec's, else sqlite:///studies/<name>.db)."),
        click.option("--study", "study_name", default=None, help=f"{STUDY_HELP} (default: the spec's name)."),
        click.option("--timeout", type=Seconds(), default=None,
                     help=f"Stop starting trials after S seconds (finite, at most {MAX_TIMEOUT_S:g}: a year)."),
        click.option("--devices", default="auto", show_default=True,
                     help="auto (every GPU, else the CPU), cpu, cuda (every GPU), or GPU indices 0,1,... "
                          "and ranges 0-7 (also cuda:0,cuda:1); each must exist."),
        click.option("--trials-per-device", type=click.IntRange(min=1, max=64), default=1, show_default=True,
                     help="Trials trained at once on each device (one CUDA stream each)."),
        click.option("--gpus-per-trial", type=click.IntRange(min=1, max=64), default=1, show_default=True,
                     help="Processes (DDP ranks) per trial: G GPUs of --devices each, or G CPU processes."),
        click.option("--artifact-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
                     help="Where epoch checkpoints of running trials go (DIR/<study>), what a retry resumes "
                          "from; give every machine of a shared study the same shared path. Default: "
                          "$BKDSEARCH_ARTIFACT_DIR, else studies/<study>/artifacts."),
        click.option("--quiet", is_flag=True, help="No per-epoch progress."),
        click.option("--allow-different-spec", is_flag=True,
                     help="Join a study made with another fixed configuration (the spec after --set, "
                          "searched values and runtime settings aside); without it such a worker is refused. "
                          "Each trial records its configuration's digest; status and report flag the study "
                          "as mixed."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class Workers:
    """A checked, opened study and how to run workers on it (shared by run and confirm)."""

    def __init__(self, spec_path: str, storage: str | None, study_name: str | None, timeout: float | None,
                 devices: str, trials_per_device: int, artifact_dir: str | None, quiet: bool,
                 gpus_per_trial: int, sets: tuple[str, ...] = (), *, allow_different_spec: bool = False) -> None:
        from ..preflight import parse_devices, preflight

        # --set values are fixed in the spec itself: every trial uses them and the study records them.
        # The spec and the options are checked before torch and Optuna are imported (seconds of CPU):
        # a bad one is refused as fast as `validate` refuses it.
        self.spec = fixed_spec(load_spec_or_exit(spec_path), sets)
        self.url = storage or self.spec.default_storage()
        name = study_name_of(study_name, self.spec)
        assert name is not None
        check_storage_url(self.url)
        self.devices = parse_devices(devices)
        check_environment()
        from ..search import open_study
        from ..search.worker import artifact_folder, device_slots

        self.slots = device_slots(self.devices, gpus_per_trial, self.spec.data.batch_size)
        artifact_label, artifact_path = artifact_folder(name, artifact_dir, STUDIES)
        # --devices other than auto chooses the devices itself; auto follows the spec's runtime.device.
        preflight(self.spec, devices={"runtime.device": self.spec.runtime.device} if devices.strip() == "auto"
                  else {}, folders={"studies folder": STUDIES, artifact_label: artifact_path},
                  teacher_cache=STUDIES / "teachers", search=True)
        self.study = open_study(self.spec, self.url, name, allow_different_spec=allow_different_spec)
        self._note_mixed()
        self.timeout, self.trials_per_device, self.quiet = timeout, trials_per_device, quiet
        # Worker takes the study's own folder; without the option it falls back to the env var.
        self.artifacts = Path(artifact_dir) / self.study.study_name if artifact_dir else None

    def _note_mixed(self) -> None:
        """Say so when this worker joins (with --allow-different-spec) a study of another configuration."""
        from ..spec.fixed import config_digest, fixed_configuration

        mine, study = config_digest(fixed_configuration(self.spec)), self.study.user_attrs.get("fixed_config_digest")
        if study is not None and mine != study:
            out.print(f"note: this worker's configuration {mine} differs from the study's {study} "
                      "(--allow-different-spec): the study is mixed; status and report say so", soft_wrap=True)

    def banner(self, cap: int, what: str = "cap") -> None:
        # soft_wrap: a narrow terminal or a log file must not break a path or URL in two.
        out.print(f"study [bold]{escape(self.study.study_name)}[/] in {escape(redact(self.url))}; {what} {cap} "
                  f"trials; devices {', '.join(str(d) for d in self.devices)} x {self.trials_per_device}"
                  + (f", {len(self.slots[0])} per trial" if len(self.slots[0]) > 1 else ""),
                  soft_wrap=True)

    def run(self, cap: int) -> WorkerReport:
        """Train up to the study's cap of ``cap`` finished trials; return the workers' report."""
        from ..search import run_workers

        return run_workers(self.spec, self.study, n_trials=cap, slots=self.slots,
                           trials_per_device=self.trials_per_device, studies_dir=STUDIES,
                           timeout=self.timeout or self.spec.search.timeout, artifact_dir=self.artifacts,
                           progress=not self.quiet, log=console_log(out))

    def confirm(self, top: int | None, seeds: int | None) -> WorkerReport | None:
        """Queue the confirmations and train them; return the workers' report (None: nothing to do)."""
        from ..search.confirm import run_confirmations

        return run_confirmations(self.study, self.spec, top=top, seeds=seeds, train=self.run,
                                 log=lambda m: out.print(m, soft_wrap=True))
