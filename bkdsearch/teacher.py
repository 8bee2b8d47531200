"""The spec's teacher: a given checkpoint, or one trained with CE and cached under studies/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import WeightsError
from .spec import ModelConfig, Recipe, RunConfig

DEFAULT_TEACHER_RECIPE = Recipe(epochs=30, lr=0.05, schedule="cosine")


def teacher_run_config(cfg: RunConfig) -> RunConfig:
    """Return the CE run that trains ``cfg``'s teacher (same data and runtime, seeded with
    ``cfg.teacher_seed``: every seed of a confirmation or comparison distils from one teacher)."""
    assert cfg.teacher is not None
    return RunConfig(
        name=f"{cfg.name}-teacher", seed=cfg.teacher_seed, method="ce", data=cfg.data, teacher=None,
        student=ModelConfig(arch=cfg.teacher.arch), train=cfg.teacher_recipe or DEFAULT_TEACHER_RECIPE,
        runtime=cfg.runtime,
    )


def cached_teacher_path(cfg: RunConfig, cache_dir: str | Path) -> Path:
    """Return where the CE-trained teacher of ``cfg`` is cached: keyed by the digest of its
    CE run (architecture, data, seed and recipe; not the runtime, see
    :meth:`bkdsearch.spec.RunConfig.digest`)."""
    tcfg = teacher_run_config(cfg)
    return Path(cache_dir) / f"{tcfg.student.arch}-{tcfg.digest()}" / "student.pt"


def teacher_weights(cfg: RunConfig, cache_dir: str | Path, *, train_if_missing: bool = True,
                    progress: bool = False, log: Callable[[str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> str | None:
    """Return the path of ``cfg``'s teacher weights: the spec's checkpoint, else the cached
    CE-trained teacher (training it first when ``train_if_missing``, saying so to ``log``;
    an interrupted training resumes from its last epoch checkpoint).

    ``should_stop``: asked before every step of the teacher's training (Ctrl-C of a worker).

    Raises:
        WeightsError: the named checkpoint does not exist, or no cached teacher and
            ``train_if_missing`` is False.
        bkdsearch.core.engine.trainer.Stopped: ``should_stop`` returned True (the teacher's last
            finished epoch stays checkpointed in its folder).
    """
    if cfg.teacher is None or cfg.method == "ce":
        return None
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        if not path.is_file():
            raise WeightsError(
                f"teacher checkpoint not found: {path} (fix teacher.checkpoint in the spec, or "
                "remove it to train the teacher with `bkdsearch teacher SPEC`)"
            )
        return str(path)
    cached = cached_teacher_path(cfg, cache_dir)
    if cached.is_file():
        return str(cached)
    if not train_if_missing:
        raise WeightsError(f"no teacher checkpoint and no cached teacher at {cached}; "
                           "run `bkdsearch teacher SPEC` first")
    from .core.engine.trainer import Trainer
    from .progress import make_progress

    tcfg = teacher_run_config(cfg)
    if log is not None:
        log(f"training the teacher {tcfg.student.arch} with CE for {tcfg.train.epochs} epochs "
            f"(once: cached under {Path(cache_dir)})")
    shown = make_progress(f"teacher {tcfg.student.arch}", log or print) if progress else None
    Trainer(tcfg, cached.parent, progress=shown, should_stop=should_stop).fit(resume=True)
    return str(cached)


def shared_teacher_weights(cfg: RunConfig, cache_dir: str | Path) -> str | None:
    """Return :func:`teacher_weights` under the cache's lock: of several processes of one
    machine (torchrun's ranks of one ``train``) one trains a missing teacher while the others
    wait, then read it from the cache.

    Raises:
        WeightsError: as :func:`teacher_weights`.
    """
    from filelock import FileLock

    if cfg.teacher is None or cfg.method == "ce" or cfg.teacher.checkpoint:
        return teacher_weights(cfg, cache_dir)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(cache_dir) / ".train.lock")):
        return teacher_weights(cfg, cache_dir)
