"""The ``bkdsearch`` command line (click). Exit codes: 0 ok, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from .. import __version__
from ..errors import BadInput, Terminated, interrupt_exit_code
from ..progress import console_log, percent
from ..urls import redact
from .common import STUDIES, STUDY_HELP, device_option, err, load_spec_or_exit, out, study_name_of
from .workers import Workers, worker_options


def _example(line: str) -> str:
    """The epilog of a command's --help: one example line (kept as written)."""
    return f"\b\nExample:\n  {line}"


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
        except KeyboardInterrupt as exc:
            # Already stopped cleanly: a further signal must not kill the interpreter's
            # teardown (Python restores the default handlers there: an exit by signal).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            err.print("terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted")
            sys.exit(interrupt_exit_code(exc))
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            # Redacted here too: an unexpected exception (a driver's, say) may quote the URL.
            err.print(f"[bold red]failed:[/] {type(exc).__name__}: {escape(redact(str(exc)))}", soft_wrap=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bkdsearch")
def main() -> None:
    """Declarative AutoML for block-wise logit distillation (Block-KD)."""
    # Batch systems send SIGTERM before SIGKILL: use that window like a first Ctrl-C.
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@main.command(epilog=_example("bkdsearch validate specs/quickstart.yaml"))
@click.argument("spec_path", metavar="SPEC")
@handle_errors
def validate(spec_path: str) -> None:
    """Check a spec: exit 0 with a summary, or 2 listing every bad field with its line."""
    from ..spec import searched
    from ..spec.checks import describe_partition, space_size

    spec = load_spec_or_exit(spec_path)
    space = searched(spec)
    teacher = spec.teacher.arch if spec.teacher else "-"
    out.print(f"[bold]{spec.name}[/]: {teacher} -> {spec.student.arch} on {spec.data.dataset}")
    for name in spec.partitions:
        out.print(f"  partition {name}: {describe_partition(spec, name)}")
    out.print(f"  searched parameters ({len(space)}): {', '.join(space) or 'none'}")
    out.print(f"  space size: {space_size(space)}")
    out.print("[green]ok[/]")


@main.command(epilog=_example("bkdsearch schema > spec.schema.json"))
def schema() -> None:
    """Print the JSON Schema of the spec format (for editor completion)."""
    from ..spec import spec_json_schema

    click.echo(json.dumps(spec_json_schema(), indent=2))


def _run_config(spec_path: str, sets: tuple[str, ...]) -> Any:
    """(spec with the --set values of its own keys, data.* or teacher.checkpoint say; the run's
    RunConfig with every --set value).

    Raises:
        SpecError: an unknown key or an invalid value (exit 2).
    """
    from ..spec import Defaults, parse_overrides, resolve
    from ..spec.resolve import SPEC_KEYS, override_spec

    spec = load_spec_or_exit(spec_path)
    overrides = parse_overrides(list(sets))
    cfg = resolve(spec, Defaults(overrides), overrides=overrides)
    own = {k: v for k, v in overrides.items() if k in SPEC_KEYS}
    return (override_spec(spec, own) if own else spec), cfg


def _teacher_cache_folders(cfg: Any) -> dict[str, Path]:
    """The teacher cache, when ``cfg``'s teacher has no checkpoint (it is trained there)."""
    if cfg.teacher is None or cfg.method == "ce" or cfg.teacher.checkpoint:
        return {}
    return {"teacher cache": STUDIES / "teachers"}


@main.command(epilog=_example("bkdsearch train specs/quickstart.yaml --set blockkd.tau=2 --out runs/t2"))
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Fix a parameter (e.g. train.lr=0.1, blockkd.tau=4); repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder (default studies/runs/<name>-<hash>).")
@device_option
@click.option("--no-resume", is_flag=True, help="Start from epoch 0 even if a checkpoint exists.")
@click.option("--gpus", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes (DDP ranks): GPUs 0..G-1, or G CPU processes with --device cpu. Under "
                   "torchrun, leave it out: torchrun starts the processes.")
@handle_errors
def train(spec_path: str, sets: tuple[str, ...], out_dir: str | None, device: str | None,
          no_resume: bool, gpus: int) -> None:
    """Train one run with fixed values (searched entries take their default or --set)."""
    from ..preflight import preflight
    from ..progress import make_progress
    from ..ranks import train_run
    from ..teacher import shared_teacher_weights

    spec, cfg = _run_config(spec_path, sets)
    run_dir = Path(out_dir) if out_dir else STUDIES / "runs" / f"{cfg.name}-{cfg.digest()}"
    preflight(cfg, devices={"--devices": device} if device else None,
              folders={"--out" if out_dir else "run folder": run_dir, **_teacher_cache_folders(cfg)},
              teacher_cache=STUDIES / "teachers")
    log = console_log(out)
    # torchrun's ranks: one trains it
    weights = shared_teacher_weights(cfg, STUDIES / "teachers", progress=True, log=log)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    result = train_run(cfg, run_dir, teacher_weights=weights, processes=gpus, device=device, resume=not no_resume,
                       progress=make_progress(f"train {cfg.student.arch}", log))
    if result is None:
        return  # another rank of a torchrun group reports
    out.print(f"val acc {percent(result.val_acc)}  test acc {percent(result.test_acc)}  "
              f"({result.images_per_s:.0f} img/s)")
    out.print(f"student weights: {result.student_path}")


@main.command(epilog=_example("bkdsearch compare specs/fashion_mnist.yaml --methods ce,kd,blockkd --seeds 3"))
@click.argument("spec_path", metavar="SPEC")
@click.option("--methods", default="ce,kd,dkd,blockkd", show_default=True, help="Comma-separated methods.")
@click.option("--seeds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Seeds per method (the spec's seed, then the next ones).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Fix a parameter for every run; repeatable.")
@device_option
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Folder for comparison.md and comparison.json (default: studies/compare/<name>).")
@handle_errors
def compare(spec_path: str, methods: str, seeds: int, sets: tuple[str, ...], device: str | None,
            output: str | None) -> None:
    """Train each method at its default (published) configuration with several seeds on one
    teacher and print the mean ± std table of validation and test accuracy."""
    from ..compare import comparison_configs, comparison_markdown, comparison_title, run_comparison, write_comparison
    from ..preflight import preflight
    from ..spec import parse_overrides

    spec = load_spec_or_exit(spec_path)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    overrides = parse_overrides(list(sets))
    seed_list = [spec.seed + i for i in range(seeds)]
    first = comparison_configs(spec, chosen, seed_list[:1], overrides)
    out_dir = Path(output) if output else STUDIES / "compare" / spec.name
    for cfg in first:
        preflight(cfg, devices={"--devices": device} if device else None,
                  folders={"-o": out_dir, **_teacher_cache_folders(cfg)}, teacher_cache=STUDIES / "teachers")
    results = run_comparison(spec, chosen, seed_list, studies_dir=STUDIES, device=device, overrides=overrides,
                             log=console_log(out))
    title = comparison_title(spec.name, chosen, seeds)
    out.print(comparison_markdown(results, title), markup=False)
    for path in write_comparison(results, out_dir, title):
        out.print(f"wrote {path}", soft_wrap=True)


@main.command(epilog=_example("bkdsearch teacher specs/quickstart.yaml --devices cpu"))
@click.argument("spec_path", metavar="SPEC")
@device_option
@handle_errors
def teacher(spec_path: str, device: str | None) -> None:
    """Train the spec's teacher with CE (cached), or load its checkpoint; report test accuracy."""
    from ..preflight import preflight
    from ..spec import Defaults, resolve
    from ..teacher import teacher_test_accuracy, teacher_weights

    spec = load_spec_or_exit(spec_path)
    if spec.teacher is None:
        raise click.UsageError("the spec has no teacher")
    cfg = resolve(spec, Defaults())
    if cfg.method == "ce":  # the teacher is the same whatever the student's method
        cfg = cfg.model_copy(update={"method": "kd"})
    # The student plays no part here: its checkpoint is not checked.
    checked = cfg.model_copy(update={"student": cfg.student.model_copy(update={"checkpoint": None})})
    preflight(checked, devices={"--devices": device} if device else None, folders=_teacher_cache_folders(cfg),
              teacher_cache=STUDIES / "teachers")
    path = teacher_weights(cfg, STUDIES / "teachers", progress=True, log=console_log(out))
    acc = teacher_test_accuracy(cfg, path, device)
    out.print(f"teacher {cfg.teacher.arch}: {path}")
    out.print(f"test accuracy {acc:.2f}%")


@main.command(epilog=_example("bkdsearch flops specs/r110_r32.yaml --set blockkd.partition=stage"))
@click.argument("spec_path", metavar="SPEC")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Fix a parameter for the table (e.g. blockkd.partition=fine, blockkd.connector=conv3x3); "
                   "repeatable. Searched entries take their default otherwise.")
@handle_errors
def flops(spec_path: str, sets: tuple[str, ...]) -> None:
    """FLOP and parameter table: teacher, student, stones and the train step."""
    from ..flops import render_flops_table, run_flops

    _, cfg = _run_config(spec_path, sets)
    render_flops_table(run_flops(cfg), out)


def _target(spec_path: str | None, storage: str | None, study_name: str | None, *,
            need_study: bool) -> tuple[str, str | None]:
    """(storage URL, study name) of a reading command: the options, else the spec's.

    Raises:
        click.UsageError: neither --storage nor SPEC (or, with ``need_study``, neither
            --study nor SPEC). PreflightError: a study name that breaks the rule.
    """
    spec = load_spec_or_exit(spec_path) if spec_path else None
    name = study_name_of(study_name, spec)
    url = storage or (spec.default_storage() if spec is not None else None)
    if not url:
        raise click.UsageError("give --storage URL (or a SPEC whose storage to use)")
    if need_study and name is None:
        raise click.UsageError("give --study NAME (or a SPEC whose study to use)")
    return url, name


@main.command(epilog=_example("bkdsearch run specs/quickstart.yaml --n-trials 4 --devices cpu"))
@worker_options
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Cap on the study's finished trials, across all workers.")
@click.option("--confirm", "then_confirm", is_flag=True,
              help="Then confirm the top configurations with fresh seeds (see `bkdsearch confirm`).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Fix a value of the spec for every trial (e.g. data.root=/data, data.batch_size=128, "
                   "teacher.checkpoint=t.pt); repeatable. A searched parameter cannot be fixed.")
@handle_errors
def run(spec_path: str, storage: str | None, study_name: str | None, n_trials: int | None,
        timeout: float | None, devices: str, trials_per_device: int, artifact_dir: str | None,
        quiet: bool, gpus_per_trial: int, allow_different_spec: bool, then_confirm: bool,
        sets: tuple[str, ...]) -> None:
    """Run (or resume) the spec's study: trials until the cap is reached.

    Before the study is opened (no trial is written otherwise) it checks what every trial
    needs: the data, the teacher's and student's checkpoints, the folders, the devices. It
    ends with a summary: the trials, the best one, the cap, and the next commands."""
    from ..summary import run_summary

    workers = Workers(spec_path, storage, study_name, timeout, devices, trials_per_device, artifact_dir, quiet,
                       gpus_per_trial, sets, allow_different_spec=allow_different_spec)
    cap = n_trials or workers.spec.search.n_trials
    workers.banner(cap)
    report = workers.run(cap)
    if then_confirm:
        workers.confirm(None, None)
    # The "run" lines repeat --set (and --allow-different-spec): without them the next worker
    # would have another configuration and be refused.
    run_options = [word for s in sets for word in ("--set", s)]
    run_options += ["--allow-different-spec"] if allow_different_spec else []
    given = {"spec_path": spec_path, "storage": storage, "study_name": study_name, "n_trials": n_trials,
             "run_options": run_options}
    for line in run_summary(workers.study, report, cap=cap, **given):
        out.print(line, markup=False, soft_wrap=True)


@main.command(epilog=_example("bkdsearch confirm specs/quickstart.yaml --top 2 --seeds 2 --devices cpu"))
@worker_options
@click.option("--top", type=click.IntRange(1, 50), default=None,
              help="Configurations to confirm, best validation accuracy first (default: search.confirm_top, 3).")
@click.option("--seeds", type=click.IntRange(1, 20), default=None,
              help="Fresh seeds per configuration (default: search.confirm_seeds, 3).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Fix a value of the spec, as the study's `run --set` did (its configuration must match); "
                   "repeatable.")
@handle_errors
def confirm(spec_path: str, storage: str | None, study_name: str | None, timeout: float | None, devices: str,
            trials_per_device: int, artifact_dir: str | None, quiet: bool, gpus_per_trial: int,
            allow_different_spec: bool, top: int | None, seeds: int | None, sets: tuple[str, ...]) -> None:
    """Re-train the study's top configurations with fresh seeds at the spec's full recipe, as
    trials of the same study (resumed, retried and shared by workers like any other); then
    status, report and export use their mean ± std and the confirmed winner."""
    from ..summary import next_steps

    workers = Workers(spec_path, storage, study_name, timeout, devices, trials_per_device, artifact_dir, quiet,
                       gpus_per_trial, sets, allow_different_spec=allow_different_spec)
    workers.confirm(top, seeds)
    for line in next_steps(workers.study.study_name, spec_path=spec_path, storage=storage, study_name=study_name):
        out.print(line, markup=False, soft_wrap=True)


@main.command(epilog=_example("bkdsearch status specs/quickstart.yaml --json"))
@click.argument("spec_path", metavar="[SPEC]", required=False)
@click.option("--storage", default=None, help="SQLAlchemy URL (default: the SPEC's).")
@click.option("--study", "study_name", default=None,
              help=f"{STUDY_HELP} (default: the SPEC's name, else all studies).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def status(spec_path: str | None, storage: str | None, study_name: str | None, as_json: bool) -> None:
    """Show the studies in a storage: trials by state, the best trials, the running ones
    (worker, epoch) and the last failures with their reasons."""
    from ..report import render_status, study_status

    url, name = _target(spec_path, storage, study_name, need_study=False)
    rows = study_status(url, name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        render_status(rows, out)


@main.command(epilog=_example("bkdsearch dashboard specs/quickstart.yaml --port 8080"))
@click.argument("spec_path", metavar="[SPEC]", required=False)
@click.option("--storage", default=None, help="SQLAlchemy URL (default: the SPEC's).")
@click.option("--study", "study_name", default=None,
              help=f"{STUDY_HELP}. Its URL is printed (default: the SPEC's name; neither: the "
                   "dashboard's home page).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, reachable from other machines).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="TCP port to listen on.")
@click.option("--writable", is_flag=True,
              help="Let the dashboard change the storage (delete or rename studies, notes, tell, "
                   "user attrs) and the checkpoint files; without it, such requests are refused.")
@click.option("--artifact-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Where the workers keep checkpoints (DIR/<study>), as given to `run`. Default: "
                   "$BKDSEARCH_ARTIFACT_DIR, else studies/<study>/artifacts.")
@handle_errors
def dashboard(spec_path: str | None, storage: str | None, study_name: str | None, host: str, port: int,
              writable: bool, artifact_dir: str | None) -> None:
    """Serve optuna-dashboard on the storage (of the SPEC, or --storage), read-only unless
    --writable; print the study's URL first.

    A trial's checkpoint appears among its artifacts. Read-only, a user attr holding JSON
    (run_config, flops) shows whole, its top-level numbers also as attrs of their own
    (flops.train_step, a sortable column)."""
    url, name = _target(spec_path, storage, study_name, need_study=False)
    try:
        from ..dashboard import serve
    except ModuleNotFoundError as exc:
        if exc.name not in ("optuna_dashboard", "bottle"):
            raise
        raise click.UsageError("optuna-dashboard is not installed: pip install 'bkdsearch[dashboard]'") from None
    serve(url, host=host, port=port, study_name=name, writable=writable, artifact_dir=artifact_dir,
          log=lambda m: out.print(m, markup=False, soft_wrap=True))


def _writing(output: str, field: str, write: Callable[[], Any]) -> Any:
    """Return ``write()``; an OSError about ``output`` (a folder that cannot be written)
    becomes bad input (exit 2), not a runtime failure."""
    from ..preflight import output_error

    try:
        return write()
    except OSError as exc:
        refusal = output_error(exc, output, field)
        if refusal is None:
            raise
        raise refusal from None


@main.command(epilog=_example("bkdsearch export specs/quickstart.yaml --trial best -o train_best.py"))
@click.argument("spec_path", metavar="[SPEC]", required=False)
@click.option("--storage", default=None, help="SQLAlchemy URL (default: the SPEC's).")
@click.option("--study", "study_name", default=None, help=f"{STUDY_HELP} (default: the SPEC's name).")
@click.option("--trial", "trial_ref", default="best", show_default=True, help="best or a trial number.")
@click.option("--allow-pruned", is_flag=True, help="Export a pruned trial too (its configuration, trained in full).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Script to write.")
@handle_errors
def export(spec_path: str | None, storage: str | None, study_name: str | None, trial_ref: str,
           allow_pruned: bool, output: str) -> None:
    """Write a standalone PyTorch training script for one trial's configuration."""
    from ..export import export_trial
    from ..preflight import check_output

    url, name = _target(spec_path, storage, study_name, need_study=True)
    assert name is not None
    if trial_ref != "best" and not trial_ref.isdigit():
        raise click.BadParameter("best or a trial number", param_hint="--trial")
    check_output(output, "-o", folder=False)
    path = _writing(output, "-o", lambda: export_trial(url, name, trial_ref, Path(output), allow_pruned=allow_pruned))
    if trial_ref == "best":
        from ..search import load_study
        from ..search.confirm import confirmed_winner

        winner = confirmed_winner(load_study(url, name))
        if winner is not None:
            out.print(winner.describe(), soft_wrap=True)
    out.print(f"wrote {path}")


@main.command(epilog=_example("bkdsearch report specs/quickstart.yaml -o report/"))
@click.argument("spec_path", metavar="[SPEC]", required=False)
@click.option("--storage", default=None, help="SQLAlchemy URL (default: the SPEC's).")
@click.option("--study", "study_name", default=None, help=f"{STUDY_HELP} (default: the SPEC's name).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Report folder.")
@handle_errors
def report(spec_path: str | None, storage: str | None, study_name: str | None, output: str) -> None:
    """Write PNG plots and summary.md for a study."""
    from ..preflight import check_output
    from ..report import write_report

    url, name = _target(spec_path, storage, study_name, need_study=True)
    assert name is not None
    check_output(output, "-o", folder=True)
    files = _writing(output, "-o", lambda: write_report(url, name, Path(output)))
    for f in files:
        out.print(f"wrote {f}")

