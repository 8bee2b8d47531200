"""One run on several processes: the launcher, and each rank's side (``python -m bkdsearch.ranks``).

:func:`train_on_ranks` starts one process per rank with the variables torchrun gives its
ranks, so a rank runs exactly as under ``torchrun --nproc_per_node G``. The launcher is not a
rank and joins no process group; several runs may be launched side by side from the threads
of one worker. Rank 0 tells the launcher of its steps and epochs through a pipe and waits, at
every epoch's end, for the launcher's answer (go on, or stop: a pruned trial, Ctrl-C); the
other ranks follow rank 0 through the process group (:mod:`bkdsearch.core.engine.trainer`). When a
rank fails the launcher stops the others and says which rank ended how; a rank that dies
without a word (SIGKILL, the OOM killer) is :class:`RankLost`, which a study retries from the
last epoch checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .core.engine.processes import start_group
from .core.engine.trainer import EpochCallback, Progress, RunResult, Stopped, Trainer
from .core.recipe import errors as core_errors
from .core.recipe.distributed import end_group, rank_device, ranks_from_env
from .errors import BadInput, RunFailure

if TYPE_CHECKING:  # the spec package is imported only when a rank runs (main)
    from .spec import RunConfig

STOPPED_EXIT = 3
"""Exit status of a rank that stopped because it was asked to (by the launcher, or rank 0)."""


class RankFailed(RunFailure):
    """A rank of the run raised an error (its message says which rank and what)."""


class RankLost(RunFailure):
    """A rank of the run died without a word (killed by a signal): worth a retry from the
    last epoch checkpoint, unlike an error the configuration would raise again."""


def leave_together() -> None:
    """After a run that ended well on every rank: wait for all ranks before any leaves the
    group. A rank that tears its gloo group down while another still finishes its last
    collective (rank 0 reports and writes files first) aborts ("terminate called without an
    active exception", seen under load)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def train_run(cfg: RunConfig, run_dir: Path, *, teacher_weights: str | None, processes: int = 1,
              device: str | None = None, resume: bool = True, progress: Progress | None = None) -> RunResult | None:
    """Train ``cfg`` the way ``bkdsearch train`` does: in this process; as this process's
    rank when torchrun started it (its variables are set); or as ``processes`` ranks launched
    from here (GPUs 0..processes-1 on CUDA, CPU processes with ``device`` cpu). ``progress``
    is told of rank 0's steps and epochs.

    Returns:
        The result on the process that reports it (rank 0, or the launcher); None on the
        other ranks of a torchrun group.

    Raises:
        BadInput: ``processes`` > 1 inside a torchrun group, or a batch that does not split.
        Whatever :class:`Trainer` and :func:`train_on_ranks` raise.
    """
    ranks = ranks_from_env()
    if ranks.active and processes > 1:
        raise BadInput("--gpus with torchrun: torchrun starts the processes (--nproc_per_node); drop --gpus")
    size = ranks.world_size if ranks.active else processes
    if cfg.data.batch_size % size:
        raise BadInput(f"data.batch_size {cfg.data.batch_size} must be a multiple of the {size} processes "
                       "(the global batch is shared evenly)")
    if device is not None:
        cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": device})})
    if processes > 1:
        import torch

        target = cfg.runtime.device
        if target not in ("auto", "cpu", "cuda"):
            raise BadInput(f"--gpus {processes} takes GPUs 0..{processes - 1} (choose them with "
                           f"CUDA_VISIBLE_DEVICES), not --devices {target}; give --devices cuda, cpu or auto")
        on_cuda = target == "cuda" or (target == "auto" and torch.cuda.is_available())
        if on_cuda and torch.cuda.device_count() < processes:
            raise BadInput(f"--gpus {processes}: only {torch.cuda.device_count()} GPU(s) visible; "
                           "use --devices cpu for CPU processes")
        return train_on_ranks(cfg, run_dir, world_size=processes, teacher_weights=teacher_weights, resume=resume,
                              progress=progress)
    where = rank_device(ranks, cfg.runtime.device) if ranks.active else None
    if where is not None:
        start_group(ranks, where)
    try:
        result = Trainer(cfg, run_dir, teacher_weights=teacher_weights, device=where or device,
                         ranks=ranks, progress=progress).fit(resume=resume)
        leave_together()
    finally:
        end_group()
    return result if ranks.is_main else None


def _error_file(run_dir: Path, rank: int) -> Path:
    return run_dir / "ranks" / f"rank-{rank}.error.json"


def train_on_ranks(cfg: RunConfig, run_dir: Path, *, world_size: int, teacher_weights: str | None = None,
                   gpus: Sequence[int] | None = None, on_epoch: EpochCallback | None = None,
                   should_stop: Callable[[], bool] | None = None, progress: Progress | None = None,
                   resume: bool = True, poll_s: float = 0.2) -> RunResult:
    """Train ``cfg`` as ``world_size`` processes (DDP) and return rank 0's result.

    Args:
        cfg: the run (a :class:`bkdsearch.spec.RunConfig`).
        run_dir: the run folder (checkpoints are rank 0's, as in a one-process run).
        world_size: processes.
        teacher_weights: the teacher's checkpoint.
        gpus: the GPU indices of the ranks (``CUDA_VISIBLE_DEVICES``; rank r takes the r-th);
            None: the ranks see what this process sees.
        on_epoch: called here with rank 0's metrics after every epoch; whatever it raises
            stops every rank and is raised again here once they have exited.
        should_stop: polled while the ranks train; True stops them within a step.
        progress: told of rank 0's steps and epochs.
        resume: resume from the run folder's last checkpoint.

    Raises:
        Stopped: ``should_stop`` (or Ctrl-C) stopped the run.
        RankLost: a rank was killed by a signal it did not get from here.
        RankFailed: a rank raised an error; a bkdsearch error is raised as its own class
            (``NonFiniteLoss``, ``DiskFull``...) with the rank named.
        Whatever ``on_epoch`` raised.
    """
    run_dir = Path(run_dir)
    (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    for rank in range(world_size):
        _error_file(run_dir, rank).unlink(missing_ok=True)
    (run_dir / "ranks" / "result.json").unlink(missing_ok=True)
    config = run_dir / "ranks" / "config.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    events_r, events_w = os.pipe()
    answers_r, answers_w = os.pipe()
    command = [sys.executable, "-m", "bkdsearch.ranks", str(config), str(run_dir),
               "--events", str(events_w), "--answers", str(answers_r)]
    command += ["--teacher", teacher_weights] if teacher_weights else []
    command += [] if resume else ["--no-resume"]
    env = dict(os.environ)
    if gpus is not None:
        # Indices count among the GPUs this process sees, which may be a selection already.
        seen = [v.strip() for v in env["CUDA_VISIBLE_DEVICES"].split(",")] if env.get("CUDA_VISIBLE_DEVICES") else None
        env["CUDA_VISIBLE_DEVICES"] = ",".join(seen[g] if seen else str(g) for g in gpus)
    procs = launch_ranks(command, world_size, env=env, pass_fds={0: (events_w, answers_r)})
    os.close(events_w)
    os.close(answers_r)
    relay = _Relay(procs, os.fdopen(events_r, "rb", buffering=0), os.fdopen(answers_w, "wb", buffering=0),
                   on_epoch, progress)
    try:
        relay.run(should_stop, poll_s)
    except BaseException:
        stop_ranks(procs)
        raise
    finally:
        relay.close()
        if progress is not None:
            progress.finish()
    return _outcome(run_dir, procs, relay)


class _Relay:
    """The launcher's side of rank 0's pipes, while the ranks run."""

    def __init__(self, procs: list[subprocess.Popen], events: IO[bytes], answers: IO[bytes],
                 on_epoch: EpochCallback | None, progress: Progress | None) -> None:
        self.procs, self.events, self.answers = procs, events, answers
        self.on_epoch, self.progress = on_epoch, progress
        self.raised: BaseException | None = None
        self.stopped = False
        self.asked = False
        """Whether ``should_stop`` stopped the ranks (rather than a failed rank)."""
        self.exited_by_themselves: dict[int, int] = {}
        """Exit statuses of the ranks that had ended before any was told to stop."""
        self._buffer = b""

    def run(self, should_stop: Callable[[], bool] | None, poll_s: float) -> None:
        """Relay until every rank has exited; stop them all when one fails or ``should_stop``."""
        open_pipe = True
        while any(p.poll() is None for p in self.procs):
            if not self.stopped and ((should_stop is not None and should_stop()) or self._failed()):
                self.stopped = True
                self.asked = not self._failed()
                self.exited_by_themselves = {r: p.returncode for r, p in enumerate(self.procs)
                                             if p.poll() is not None}
                for p in self.procs:  # each rank stops at its next step; rank 0 leads them
                    with contextlib.suppress(OSError):
                        p.send_signal(signal.SIGTERM)
                threading.Thread(target=stop_ranks, args=(self.procs, 30.0), daemon=True).start()
            if open_pipe and select.select([self.events], [], [], poll_s)[0]:
                open_pipe = self._read()
            elif not open_pipe:
                time.sleep(poll_s)

    def _failed(self) -> bool:
        return any(p.poll() not in (None, 0) for p in self.procs)

    def _read(self) -> bool:
        chunk = self.events.read(65536)
        if not chunk:
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._event(json.loads(line))
        return True

    def _event(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "epoch":
            answer = "go"
            if self.raised is None and self.on_epoch is not None:
                try:
                    self.on_epoch(int(event["epoch"]), event["row"])
                except BaseException as exc:  # noqa: BLE001 - raised again once the ranks have stopped
                    self.raised, answer = exc, "stop"
            with contextlib.suppress(OSError):
                self.answers.write(f"{answer}\n".encode())
        elif self.progress is not None:
            if kind == "begin":
                self.progress.begin(*event["args"])
            elif kind == "steps":
                for _ in range(int(event["n"])):
                    self.progress.step()
            elif kind == "end_epoch":
                self.progress.end_epoch(event["row"])

    def close(self) -> None:
        for f in (self.events, self.answers):
            with contextlib.suppress(OSError):
                f.close()


def _outcome(run_dir: Path, procs: list[subprocess.Popen], relay: _Relay) -> RunResult:
    codes = [p.wait() for p in procs]
    world = len(procs)
    if relay.raised is not None:
        raise relay.raised
    if all(c == 0 for c in codes):
        return RunResult(**json.loads((run_dir / "ranks" / "result.json").read_text()))
    reports = {r: _read_error(run_dir, r) for r in range(world)}
    # A rank killed from outside is the cause; the others' errors are its echo in the group.
    ended = relay.exited_by_themselves if relay.stopped else dict(enumerate(codes))
    for rank, code in sorted(ended.items()):
        if code < 0 and reports[rank] is None:
            raise RankLost(exit_description(rank, world, code))
    for rank, report in reports.items():
        if report is not None and report["type"] != "Stopped":
            cls = getattr(core_errors, report["type"], None)
            if isinstance(cls, type) and issubclass(cls, core_errors.BkdsearchError):
                raise cls(f"rank {rank} of {world}: {report['message']}")
            raise RankFailed(f"rank {rank} of {world}: {report['type']}: {report['message']}")
    if relay.asked and all(c in (0, STOPPED_EXIT, -signal.SIGTERM, -signal.SIGKILL) for c in codes):
        raise Stopped("asked to stop")
    rank = next(r for r, c in enumerate(codes) if c not in (0, STOPPED_EXIT))
    raise RankLost(exit_description(rank, world, codes[rank]))


def _read_error(run_dir: Path, rank: int) -> dict[str, str] | None:
    try:
        return json.loads(_error_file(run_dir, rank).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- rank side
class _PipeProgress:
    """Rank 0's :class:`Progress` and ``on_epoch``: events to the launcher, answers back."""

    def __init__(self, events_fd: int, answers_fd: int) -> None:
        self.events = os.fdopen(events_fd, "wb", buffering=0)
        self.answers = os.fdopen(answers_fd, "rb", buffering=0)
        self._steps, self._sent = 0, time.monotonic()

    def _send(self, **event: Any) -> None:
        with contextlib.suppress(OSError):  # the launcher is gone: on_epoch's read says so
            self.events.write((json.dumps(event) + "\n").encode())

    def begin(self, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
        self._send(kind="begin", args=[epochs, start_epoch, steps_per_epoch])

    def step(self) -> None:
        self._steps += 1
        if time.monotonic() - self._sent >= 0.5:  # a moving bar, not a message per step
            self._flush()

    def _flush(self) -> None:
        if self._steps:
            self._send(kind="steps", n=self._steps)
        self._steps, self._sent = 0, time.monotonic()

    def end_epoch(self, row: Mapping[str, float]) -> None:
        self._flush()
        self._send(kind="end_epoch", row=dict(row))

    def finish(self) -> None:
        self._flush()

    def on_epoch(self, epoch: int, row: dict[str, float]) -> None:
        """Tell the launcher of ``epoch`` and wait for its answer.

        Raises:
            Stopped: the launcher answered stop, or is gone.
        """
        self._send(kind="epoch", epoch=epoch, row=row)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = self.answers.read(1)
            if not chunk:
                raise Stopped("the launcher is gone")
            answer += chunk
        if answer.strip() != b"go":
            raise Stopped(f"the launcher stopped the run after epoch {epoch}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run this process's rank of a run (launched by :func:`train_on_ranks`); return the
    exit status: 0 done, :data:`STOPPED_EXIT` stopped, 1 failed (the reason in the run
    folder's ``ranks/rank-<r>.error.json``)."""
    from .spec import RunConfig

    parser = argparse.ArgumentParser(prog="python -m bkdsearch.ranks")
    parser.add_argument("config", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--answers", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    ranks = ranks_from_env()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    exit_with_parent()
    code = 1
    try:
        cfg = RunConfig.model_validate_json(args.config.read_text())
        device = rank_device(ranks, cfg.runtime.device)
        start_group(ranks, device)
        pipe = _PipeProgress(args.events, args.answers) if ranks.is_main and args.events is not None else None
        trainer = Trainer(cfg, args.run_dir, teacher_weights=args.teacher, device=device, ranks=ranks,
                          on_epoch=pipe.on_epoch if pipe else None, progress=pipe, should_stop=stop.is_set)
        result = trainer.fit(resume=not args.no_resume)
        if ranks.is_main:
            out = args.run_dir / "ranks" / "result.json"
            out.with_suffix(".tmp").write_text(json.dumps(dataclasses.asdict(result)))
            os.replace(out.with_suffix(".tmp"), out)
        leave_together()
        code = 0
    except Stopped:
        code = STOPPED_EXIT
    except BaseException as exc:  # noqa: BLE001 - the launcher reads the reason from the file
        with contextlib.suppress(OSError):
            _error_file(args.run_dir, ranks.rank).write_text(
                json.dumps({"type": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else ""}))
    finally:
        try:
            end_group()
        except Exception as exc:  # noqa: BLE001 - the rank's outcome is already decided: say so, exit as planned
            print(f"rank {ranks.rank}: leaving the process group failed ({type(exc).__name__}: {exc})",
                  file=sys.stderr, flush=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing to flush
            stream.flush()
    return code


# ---------------------------------------------------------------------------- processes
def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 now (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_ranks(command: Sequence[str], world_size: int, *, env: Mapping[str, str] | None = None,
                 pass_fds: Mapping[int, Sequence[int]] | None = None) -> list[subprocess.Popen]:
    """Start ``world_size`` processes of ``command`` on this machine, each with the
    variables torchrun gives its ranks; ``pass_fds[rank]`` are file descriptors that rank
    inherits. Returns the processes, rank order."""
    port = str(free_port())
    base = dict(os.environ if env is None else env)
    # As torchrun does: ranks sharing the CPU must not each start a thread per core.
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
    procs = []
    for rank in range(world_size):
        rank_env = {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                    "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                    "LOCAL_WORLD_SIZE": str(world_size), "GROUP_RANK": "0"}
        procs.append(subprocess.Popen(list(command), env=rank_env, pass_fds=tuple((pass_fds or {}).get(rank, ()))))
    return procs


def exit_description(rank: int, world_size: int, code: int) -> str:
    """Return how rank ``rank`` ended, in words (``rank 1 of 2 was killed by SIGKILL``)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"rank {rank} of {world_size} was killed by {name}"
    return f"rank {rank} of {world_size} exited with status {code}"


def stop_ranks(procs: Sequence[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Ask the ranks still running to stop (SIGTERM), and kill those still there after
    ``grace_s``; returns once all have exited."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def exit_with_parent(poll_s: float = 1.0, on_exit: Callable[[], None] | None = None) -> None:
    """Start a daemon thread that ends this process when the process that started it dies
    (a worker killed with SIGKILL must not leave its ranks training); ``on_exit`` runs first."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        if on_exit is not None:
            on_exit()
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


if __name__ == "__main__":
    os._exit(main())
