"""The spec's teacher: a given checkpoint, or one trained with CE and cached under studies/."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from .errors import DataError, WeightsError
from .spec import DataConfig, ModelConfig, RunConfig
from .spec.config import DEFAULT_TEACHER_RECIPE


def teacher_run_config(cfg: RunConfig) -> RunConfig:
    """Return the CE run that trains ``cfg``'s teacher (same data and runtime, seeded with
    ``cfg.teacher_seed``: every seed of a confirmation or comparison distils from one teacher)."""
    assert cfg.teacher is not None
    return RunConfig(
        name=f"{cfg.name}-teacher", seed=cfg.teacher_seed, method="ce", data=cfg.data, teacher=None,
        student=ModelConfig(arch=cfg.teacher.arch), train=cfg.teacher_recipe or DEFAULT_TEACHER_RECIPE,
        runtime=cfg.runtime,
    )


# Where the files lie and how they are read do not change what a teacher learns.
_NOT_IDENTITY = {"root", "download", "num_workers", "decode", "eval_batch_size"}


def teacher_identity(cfg: RunConfig) -> str:
    """Return the digest that names ``cfg``'s CE-trained teacher: its architecture, recipe
    and seed, and the dataset by name, split settings and content (:func:`data_content_id`),
    never by the folder it lies in, so a moved dataset keeps its teacher and changed
    content trains a new one.

    Raises:
        DataError: the dataset cannot be read (its content is part of the identity).
    """
    tcfg = teacher_run_config(cfg)
    blob = tcfg.model_dump(mode="json", exclude={"runtime"})
    blob["data"] = {k: v for k, v in blob["data"].items() if k not in _NOT_IDENTITY}
    blob["data"]["content"] = data_content_id(cfg.data)
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def data_content_id(data: DataConfig) -> str | None:
    """Return a digest of the training split's content (None for the synthetic set, which
    its settings define): the bytes of images and labels for the in-memory datasets; the
    relative paths and sizes of ``root/train``'s files for an image folder.

    Raises:
        DataError: the dataset cannot be read.
    """
    if data.dataset == "synthetic":
        return None
    root = None if data.root is None else str(Path(data.root).expanduser().resolve())
    return _content_id(data.dataset, root, data.download)


@functools.lru_cache(maxsize=8)
def _content_id(dataset: str, root: str | None, download: bool) -> str:
    digest = hashlib.sha256()
    if dataset == "imagefolder":
        from .core.recipe.data import open_image_folder

        if root is None:
            raise DataError("imagefolder needs data.root (a folder with train/<class>/ and val/<class>/)")
        folder = open_image_folder(root, "train")
        base = Path(folder.root)
        for path, label in folder.samples:  # sorted by class, then file name
            relative = Path(path).relative_to(base).as_posix()
            digest.update(f"{relative}\0{os.path.getsize(path)}\0{label}\n".encode())
    else:
        from .core.engine.data import load_arrays

        train = load_arrays(dataset, root, "train", download=download)
        digest.update(train.images.numpy().tobytes())
        digest.update(train.labels.numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_teacher_path(cfg: RunConfig, cache_dir: str | Path) -> Path:
    """Return where the CE-trained teacher of ``cfg`` is cached: keyed by
    :func:`teacher_identity`. A teacher cached by an earlier version under the digest of its
    whole CE run (data folder included) is still found there, so upgrading retrains nothing.

    Raises:
        DataError: the dataset cannot be read (its content is part of the key).
    """
    tcfg = teacher_run_config(cfg)
    legacy = Path(cache_dir) / f"{tcfg.student.arch}-{tcfg.digest()}" / "student.pt"
    if legacy.is_file():
        return legacy
    return Path(cache_dir) / f"{tcfg.student.arch}-{teacher_identity(cfg)}" / "student.pt"


def needs_training(cfg: RunConfig, cache_dir: str | Path) -> bool:
    """Return True when ``cfg``'s teacher must be trained first: the run distils, names no
    checkpoint and finds no cached teacher (the one case that takes the teacher lock)."""
    if cfg.teacher is None or cfg.method == "ce" or cfg.teacher.checkpoint:
        return False
    return not cached_teacher_path(cfg, cache_dir).is_file()


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


def teacher_test_accuracy(cfg: RunConfig, path: str | Path, device: str | None = None) -> float:
    """Return the test accuracy (%) of the teacher weights at ``path`` on ``cfg``'s data
    (the figure a student is measured against), on ``device`` (``cfg``'s runtime device
    when None). Builds the teacher and the data's loaders only, no training state.

    Raises:
        WeightsError: ``path`` does not load into the teacher's architecture.
        DataError: the dataset cannot be read.
    """
    from .core.engine.data import build_data
    from .core.engine.trainer import evaluate, pick_device
    from .core.engine.weights import load_weights
    from .zoo import create_model

    assert cfg.teacher is not None
    target = pick_device(device or cfg.runtime.device)
    data = build_data(cfg.data.dataset, root=cfg.data.root, download=cfg.data.download, val_fraction=0.0,
                      batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size, device=target,
                      augment=False, num_workers=cfg.data.num_workers, synthetic=cfg.data.synthetic,
                      data_seed=cfg.data.split_seed, image_size=cfg.data.image_size or 224, decode=cfg.data.decode)
    teacher = load_weights(create_model(cfg.teacher.arch, num_classes=data.num_classes), str(path)).to(target)
    autocast = target.type == "cuda" and cfg.runtime.amp in ("auto", "bf16")
    return evaluate(teacher, data.test, autocast)


def shared_teacher_weights(cfg: RunConfig, cache_dir: str | Path, *, progress: bool = False,
                           log: Callable[[str], None] | None = None) -> str | None:
    """Return :func:`teacher_weights` under the cache's lock: of several processes of one
    machine (torchrun's ranks of one ``train``) one trains a missing teacher (showing its
    ``progress`` to ``log``) while the others wait, then read it from the cache.

    Raises:
        WeightsError: as :func:`teacher_weights`.
    """
    from filelock import FileLock

    if not needs_training(cfg, cache_dir):
        return teacher_weights(cfg, cache_dir)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(cache_dir) / ".train.lock")):
        return teacher_weights(cfg, cache_dir, progress=progress, log=log)
