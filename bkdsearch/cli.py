"""The ``bkdsearch`` command line (click). Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import BadInput
from .urls import redact

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

STUDIES = Path("studies")


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn known errors into a short message and exit code (2 bad input, 1 runtime); every
    message has the passwords of the URLs in it replaced by ``***``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except BadInput as exc:
            err.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            # Redacted here too: an unexpected exception (a driver's, say) may quote the URL.
            err.print(f"[bold red]failed:[/] {type(exc).__name__}: {escape(redact(str(exc)))}", soft_wrap=True)
            sys.exit(1)

    return wrapper


def _load(spec_path: str) -> Any:
    from .spec import SpecError, load_spec

    try:
        return load_spec(spec_path)
    except SpecError as exc:
        err.print(redact(exc.format(spec_path)), soft_wrap=True, markup=False)
        err.print(f"{len(exc.errors)} error(s) in {spec_path}")
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bkdsearch")
def main() -> None:
    """Declarative AutoML for block-wise logit distillation (Block-KD)."""


@main.command()
@click.argument("spec_path", metavar="SPEC")
@handle_errors
def validate(spec_path: str) -> None:
    """Check a spec: exit 0 with a summary, or 2 listing every bad field with its line."""
    from .spec import searched

    spec = _load(spec_path)
    space = searched(spec)
    teacher = spec.teacher.arch if spec.teacher else "-"
    out.print(f"[bold]{spec.name}[/]: {teacher} -> {spec.student.arch} on {spec.data.dataset}")
    for name, cand in spec.partitions.items():
        out.print(f"  partition {name}: {_describe_partition(spec, name, cand)}")
    out.print(f"  searched parameters ({len(space)}): {', '.join(space) or 'none'}")
    out.print(f"  space size: {_space_size(space)}")
    out.print("[green]ok[/]")


def _describe_partition(spec: Any, name: str, cand: Any) -> str:
    from .spec import resolve_partition

    if spec.teacher is None:
        return "unused (no teacher)"
    part = resolve_partition(spec, name)
    return f"n={len(part.teacher) + 1} teacher {part.teacher} / student {part.student}"


def _space_size(space: dict[str, Any]) -> str:
    from .spec import Choice, IntRange

    size = 1
    for dist in space.values():
        if isinstance(dist, Choice):
            size *= len(dist.choice)
        elif isinstance(dist, IntRange):
            low, high = dist.int_range
            size *= (high - low) // dist.step + 1
        else:
            return "continuous"
    return str(size)


@main.command()
def schema() -> None:
    """Print the JSON Schema of the spec format (for editor completion)."""
    from .spec import Spec

    click.echo(json.dumps(Spec.model_json_schema(by_alias=True), indent=2))


def _run_config(spec_path: str, sets: tuple[str, ...]) -> Any:
    from .spec import Defaults, parse_overrides, resolve

    spec = _load(spec_path)
    overrides = parse_overrides(list(sets))
    return spec, resolve(spec, Defaults(overrides), overrides=overrides)


@main.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Fix a parameter (e.g. train.lr=0.1, blockkd.tau=4); repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder (default studies/runs/<name>-<hash>).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N.")
@click.option("--no-resume", is_flag=True, help="Start from epoch 0 even if a checkpoint exists.")
@handle_errors
def train(spec_path: str, sets: tuple[str, ...], out_dir: str | None, device: str | None,
          no_resume: bool) -> None:
    """Train one run with fixed values (searched entries take their default or --set)."""
    from .core.trainer import Trainer
    from .teacher import teacher_weights

    spec, cfg = _run_config(spec_path, sets)
    run_dir = Path(out_dir) if out_dir else STUDIES / "runs" / f"{cfg.name}-{cfg.digest()}"
    weights = teacher_weights(cfg, STUDIES / "teachers")
    trainer = Trainer(cfg, run_dir, teacher_weights=weights, device=device)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    result = trainer.fit(resume=not no_resume)
    out.print(f"val acc {_pct(result.val_acc)}  test acc {_pct(result.test_acc)}  "
              f"({result.images_per_s:.0f} img/s)")
    out.print(f"student weights: {result.student_path}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


@main.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N.")
@handle_errors
def teacher(spec_path: str, device: str | None) -> None:
    """Train the spec's teacher with CE (cached), or load its checkpoint; report test accuracy."""
    from .core.trainer import Trainer, evaluate
    from .spec import Defaults, resolve
    from .teacher import teacher_run_config, teacher_weights

    spec = _load(spec_path)
    if spec.teacher is None:
        raise click.UsageError("the spec has no teacher")
    cfg = resolve(spec, Defaults())
    if cfg.method == "ce":  # the teacher is the same whatever the student's method
        cfg = cfg.model_copy(update={"method": "kd"})
    path = teacher_weights(cfg, STUDIES / "teachers")
    tcfg = teacher_run_config(cfg)
    evaluated = tcfg.model_copy(update={"student": tcfg.student.model_copy(update={"checkpoint": path})})
    trainer = Trainer(evaluated, Path(path).parent, device=device)
    acc = evaluate(trainer.method.student, trainer.data.test, trainer.autocast)
    out.print(f"teacher {tcfg.student.arch}: {path}")
    out.print(f"test accuracy {acc:.2f}%")


@main.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
@handle_errors
def flops(spec_path: str, sets: tuple[str, ...]) -> None:
    """FLOP and parameter table: teacher, student, stones and the train step."""
    from .flops import render_flops_table, run_flops

    _, cfg = _run_config(spec_path, sets)
    render_flops_table(run_flops(cfg), out)


def _storage_for(spec_path: str | None, storage: str | None) -> str:
    if storage:
        return storage
    if spec_path:
        return _load(spec_path).default_storage()
    raise click.UsageError("give --storage URL (or a SPEC whose storage to use)")


@main.command()
@click.argument("spec_path", metavar="SPEC")
@click.option("--storage", default=None, help="SQLAlchemy URL (default: the spec's, else sqlite:///studies/<name>.db).")
@click.option("--study", "study_name", default=None, help="Study name (default: the spec's name).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Cap on the study's finished trials, across all workers.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting trials after S seconds.")
@click.option("--devices", default="auto", show_default=True, help="auto, cpu, or GPU indices 0,1,...")
@click.option("--trials-per-device", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Trials trained at once on each device (one CUDA stream each).")
@click.option("--artifact-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Where epoch checkpoints of running trials go (DIR/<study>), what a retry resumes from; "
                   "give every machine of a shared study the same shared path. Default: "
                   "$BKDSEARCH_ARTIFACT_DIR, else studies/<study>/artifacts.")
@click.option("--quiet", is_flag=True, help="No per-epoch progress.")
@handle_errors
def run(spec_path: str, storage: str | None, study_name: str | None, n_trials: int | None,
        timeout: float | None, devices: str, trials_per_device: int, artifact_dir: str | None,
        quiet: bool) -> None:
    """Run (or resume) the spec's study: trials until the cap is reached."""
    from .search import devices_for, open_study, run_workers

    spec = _load(spec_path)
    url = storage or spec.default_storage()
    try:
        devs = devices_for(devices)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--devices") from None
    study = open_study(spec, url, study_name)
    cap = n_trials or spec.search.n_trials
    # soft_wrap: a narrow terminal or a log file must not break a path or URL in two.
    out.print(f"study [bold]{escape(study.study_name)}[/] in {escape(redact(url))}; cap {cap} trials; "
              f"devices {', '.join(str(d) for d in devs)} x {trials_per_device}", soft_wrap=True)
    # Worker takes the study's own folder; without the option it falls back to the env var.
    artifacts = Path(artifact_dir) / study.study_name if artifact_dir else None
    report = run_workers(spec, study, n_trials=cap, devices=devs, trials_per_device=trials_per_device,
                         studies_dir=STUDIES, timeout=timeout or spec.search.timeout, artifact_dir=artifacts,
                         progress=not quiet, log=lambda m: out.print(m, markup=False, soft_wrap=True))
    out.print(f"this worker: {report.complete} complete, {report.pruned} pruned, {report.failed} failed",
              soft_wrap=True)


@main.command()
@click.argument("spec_path", metavar="[SPEC]", required=False)
@click.option("--storage", default=None, help="SQLAlchemy URL.")
@click.option("--study", "study_name", default=None, help="Study name (default: all studies).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def status(spec_path: str | None, storage: str | None, study_name: str | None, as_json: bool) -> None:
    """Show the studies in a storage: trials by state, the best trials, the running ones
    (worker, epoch) and the last failures with their reasons."""
    from .report import render_status, study_status

    url = _storage_for(spec_path, storage)
    if spec_path and not study_name:
        study_name = _load(spec_path).name
    rows = study_status(url, study_name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        render_status(rows, out)


@main.command()
@click.option("--storage", required=True, help="SQLAlchemy URL.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@handle_errors
def dashboard(storage: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on the storage."""
    from .search import make_storage

    # create=False: a mistyped SQLite path is an error, not a new empty study database.
    opened = make_storage(storage, create=False)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise click.UsageError("optuna-dashboard is not installed: pip install 'bkdsearch[dashboard]'") from None
    run_server(opened, host=host, port=port)


@main.command()
@click.option("--storage", required=True, help="SQLAlchemy URL.")
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("--trial", "trial_ref", default="best", show_default=True, help="best or a trial number.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Script to write.")
@handle_errors
def export(storage: str, study_name: str, trial_ref: str, output: str) -> None:
    """Write a standalone PyTorch training script for one trial's configuration."""
    from .export import export_trial

    if trial_ref != "best" and not trial_ref.isdigit():
        raise click.BadParameter("best or a trial number", param_hint="--trial")
    path = export_trial(storage, study_name, trial_ref, Path(output))
    out.print(f"wrote {path}")


@main.command()
@click.option("--storage", required=True, help="SQLAlchemy URL.")
@click.option("--study", "study_name", required=True, help="Study name.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Report folder.")
@handle_errors
def report(storage: str, study_name: str, output: str) -> None:
    """Write PNG plots and summary.md for a study."""
    from .report import write_report

    files = write_report(storage, study_name, Path(output))
    for f in files:
        out.print(f"wrote {f}")


if __name__ == "__main__":  # pragma: no cover
    main()
