"""The one place that reaches into Optuna's private parts.

Optuna has no public way to get a study's storage, a trial's id, the RDB storage under its
cache, the stale trials of a study, or to write a trial and a marker in one transaction; the
tool needs all of them (heartbeats, retries of dead trials, the outage-patient storage). Every
such use lives here, behind the small public surface below, so an Optuna upgrade that moves
them breaks this module alone (``tests/test_optuna_seam.py`` checks that no other module of
the package touches a private Optuna name, and that :class:`WrappedStorage` wraps every storage
method the installed Optuna has).

- a study and its trials: :func:`storage_of`, :func:`study_id_of`, :func:`trial_id_of`,
  :func:`stored_trial`, :func:`artifact_file`;
- heartbeats: :func:`heartbeat_interval`, :func:`grace_period`, :func:`stale_trial_ids`,
  :func:`running_without_heartbeat`, :func:`fail_if_running`;
- layers of a storage: :func:`with_cache`, :func:`unwrap_cache`, :func:`rdb_of`;
- writes keyed by a token: :func:`create_trial_with_token`, :func:`trial_with_token`,
  :func:`set_state_with_token`;
- :class:`FrozenStudy` (what ``get_all_studies`` returns; Optuna does not export it);
- :class:`WrappedStorage`: a storage that wraps an ``RDBStorage`` method by method, each
  call going through one overridable :meth:`WrappedStorage.guard`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Container, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

__all__ = ["FrozenStudy", "WrappedStorage", "all_trials", "artifact_file", "create_trial_with_token", "fail_if_running",
           "grace_period", "heartbeat_interval", "rdb_of", "running_without_heartbeat", "set_state_with_token",
           "stale_trial_ids", "storage_of", "stored_trial", "study_id_of", "trial_id_of", "trial_with_token",
           "unwrap_cache", "with_cache"]

T = TypeVar("T")

# ------------------------------------------------------------------ a study and its trials


def storage_of(study: optuna.Study) -> BaseStorage:
    """Return the storage ``study`` reads and writes (Optuna's cache over an RDB storage)."""
    return study._storage


def study_id_of(study: optuna.Study | FrozenStudy) -> int:
    """Return the storage's id of ``study``."""
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """Return the storage's id of ``trial`` (not its number)."""
    return trial._trial_id


def stored_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """Return ``trial`` as the storage has it now (state, attrs written by anyone)."""
    return storage_of(study).get_trial(trial_id_of(trial))


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Return every trial of ``study``, not copied (read only)."""
    return storage_of(study).get_all_trials(study_id_of(study), deepcopy=False)


def artifact_file(store: FileSystemArtifactStore, artifact_id: str) -> Path:
    """Return the file an artifact of ``store`` is (or would be) written to."""
    return Path(store._base_path) / artifact_id


# ------------------------------------------------------------------ layers of a storage


def with_cache(storage: BaseStorage) -> BaseStorage:
    """Return ``storage`` under Optuna's cache of finished trials (what Optuna puts over
    every RDB storage; a wrapper of one must ask for it)."""
    return _CachedStorage(storage)  # type: ignore[arg-type]  # it needs only the wrapped methods


def unwrap_cache(storage: BaseStorage) -> BaseStorage:
    """Return the storage under Optuna's cache (``storage`` itself when it has none)."""
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def rdb_of(storage: BaseStorage) -> RDBStorage | None:
    """Return the RDB storage under the cache and :class:`WrappedStorage` layers, or None
    (an in-memory or journal storage)."""
    inner = unwrap_cache(storage)
    if isinstance(inner, WrappedStorage):
        inner = inner.backend
    return inner if isinstance(inner, RDBStorage) else None


# ------------------------------------------------------------------ heartbeats


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """Return the heartbeat interval in seconds, None when ``storage`` records no heartbeats."""
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


def grace_period(storage: BaseStorage) -> int | None:
    """Return the RDB storage's grace period in seconds (None: not set, or not an RDB)."""
    rdb = rdb_of(storage)
    return None if rdb is None else rdb.grace_period


def stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """Return the ids of the running trials whose heartbeat is older than the grace period
    (as the storage judges it: :meth:`WrappedStorage.stale_trial_ids` may say none)."""
    return storage._get_stale_trial_ids(study_id) if isinstance(storage, BaseHeartbeat) else []


def running_without_heartbeat(rdb: RDBStorage, study_id: int) -> dict[int, datetime | None]:
    """Return {trial id: start} of the running trials of the study that never recorded a
    heartbeat (one query)."""
    import sqlalchemy.orm

    with _create_scoped_session(rdb.scoped_session) as session:
        running = (session.query(models.TrialModel)
                   .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
                   .filter(models.TrialModel.state == TrialState.RUNNING)
                   .filter(models.TrialModel.study_id == study_id).all())
        return {t.trial_id: t.datetime_start for t in running if not t.heartbeats}


def fail_if_running(rdb: RDBStorage, trial_id: int) -> bool:
    """Set a running trial FAIL in one conditional UPDATE; return False when it was not
    running any more. (Optuna's ``set_trial_state_values`` reads, then writes: on SQLite two
    workers may both see it running and both fail it.)"""
    with _create_scoped_session(rdb.scoped_session) as session:
        changed = (session.query(models.TrialModel)
                   .filter(models.TrialModel.trial_id == trial_id,
                           models.TrialModel.state == TrialState.RUNNING)
                   .update({models.TrialModel.state: TrialState.FAIL,
                            models.TrialModel._datetime_complete_utc: datetime.now(UTC).replace(tzinfo=None)},
                           synchronize_session=False))
    return changed == 1


# ------------------------------------------------------------------ writes keyed by a token


def create_trial_with_token(rdb: RDBStorage, study_id: int, template: FrozenTrial, key: str) -> FrozenTrial:
    """Create a trial from ``template`` (its system attrs carry ``key`` = a token) in one
    transaction that locks the study (trial numbers are counted in it); return it."""
    with _create_scoped_session(rdb.scoped_session) as session:
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        trial = rdb._get_prepared_new_trial(study_id, template, session)
        frozen = copy.deepcopy(template)
        frozen.number, frozen.datetime_start = trial.number, trial.datetime_start
        frozen._trial_id = trial.trial_id
    return frozen


def trial_with_token(rdb: RDBStorage, study_id: int, key: str, token: str) -> int | None:
    """Return the id of the trial of the study whose system attr ``key`` is ``token``, or None."""
    with _create_scoped_session(rdb.scoped_session) as session:
        row = (session.query(models.TrialSystemAttributeModel.trial_id)
               .join(models.TrialModel)
               .filter(models.TrialModel.study_id == study_id,
                       models.TrialSystemAttributeModel.key == key,
                       models.TrialSystemAttributeModel.value_json == json.dumps(token))
               .order_by(models.TrialSystemAttributeModel.trial_id)
               .first())
    return None if row is None else int(row[0])


def set_state_with_token(rdb: RDBStorage, trial_id: int, state: TrialState, values: Sequence[float] | None,
                         key: str, token: str) -> bool:
    """Like ``RDBStorage.set_trial_state_values``, writing system attr ``key`` = ``token`` in
    the same transaction; return False for a RUNNING request on a trial that is not WAITING
    any more (another worker took it).

    Raises:
        UpdateFinishedTrialError: the trial had finished.
    """
    from sqlalchemy.exc import IntegrityError

    try:
        with _create_scoped_session(rdb.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            rdb.check_trial_is_updatable(trial_id, trial.state)
            if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
                return False
            for objective, value in enumerate(values or ()):
                rdb._set_trial_value_without_commit(session, trial, objective, value)
            rdb._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel, trial_id, key, token)
            trial.state = state
            if state == TrialState.RUNNING:
                trial.datetime_start = datetime.now()
            if state.is_finished():
                trial.datetime_complete = datetime.now()
    except IntegrityError:
        return False
    return True


# ------------------------------------------------------------------ the wrapper


class WrappedStorage(BaseStorage, BaseHeartbeat):
    """A storage that wraps an ``RDBStorage`` method by method, as Optuna's own cache does:
    every call that reaches the database goes through :meth:`guard` (a subclass retries
    there); trial creation, state changes and the stale-trial check go through
    :meth:`create_trial`, :meth:`set_trial_state_values` and :meth:`stale_trial_ids`, which a
    subclass may replace. Put it under Optuna's cache with :func:`with_cache`.

    The storage methods below do, return and raise what ``BaseStorage``'s, ``BaseHeartbeat``'s
    and ``RDBStorage``'s of the same name document (the underscored ones are those Optuna's
    cache calls on its backend); ``tests/test_optuna_seam.py`` fails when the installed Optuna
    has one that is not wrapped here.

    Args:
        backend: the RDB storage wrapped.
    """

    def __init__(self, backend: RDBStorage) -> None:
        self.backend = backend

    def guard(self, what: str, attempt: Callable[[], T]) -> T:
        """Return ``attempt()``; ``what`` names the call in log lines. Override to retry."""
        return attempt()

    def create_trial(self, study_id: int, template_trial: FrozenTrial | None) -> FrozenTrial:
        """Create a trial (fresh and RUNNING, or from ``template_trial``) and return it."""
        return self.guard("create_new_trial", lambda: self.backend._create_new_trial(study_id, template_trial))

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Return the ids of the running trials whose heartbeat is older than the grace period."""
        return self.guard("the stale-trial check", lambda: self.backend._get_stale_trial_ids(study_id))

    # -------------------------------------------------------------- studies
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self.guard("create_new_study", lambda: self.backend.create_new_study(directions, study_name))

    def delete_study(self, study_id: int) -> None:
        self.guard("delete_study", lambda: self.backend.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.guard("set_study_user_attr", lambda: self.backend.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.guard("set_study_system_attr", lambda: self.backend.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.guard("get_study_id_from_name", lambda: self.backend.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.guard("get_study_name_from_id", lambda: self.backend.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.guard("get_study_directions", lambda: self.backend.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.guard("get_study_user_attrs", lambda: self.backend.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.guard("get_study_system_attrs", lambda: self.backend.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[FrozenStudy]:
        return self.guard("get_all_studies", self.backend.get_all_studies)

    # -------------------------------------------------------------- trials: writes
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return trial_id_of(self.create_trial(study_id, template_trial))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self.guard("set_trial_state_values",
                          lambda: self.backend.set_trial_state_values(trial_id, state, values))

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        self.guard("set_trial_param", lambda: self.backend.set_trial_param(
            trial_id, param_name, param_value_internal, distribution))

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.guard("set_trial_intermediate_value",
                   lambda: self.backend.set_trial_intermediate_value(trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.guard("set_trial_user_attr", lambda: self.backend.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.guard("set_trial_system_attr", lambda: self.backend.set_trial_system_attr(trial_id, key, value))

    # -------------------------------------------------------------- trials: reads
    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.guard("get_trial_id_from_study_id_trial_number",
                          lambda: self.backend.get_trial_id_from_study_id_trial_number(study_id, trial_number))

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self.guard("get_trial_number_from_id", lambda: self.backend.get_trial_number_from_id(trial_id))

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self.guard("get_trial_param", lambda: self.backend.get_trial_param(trial_id, param_name))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.guard("get_trial", lambda: self.backend.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self.guard("get_all_trials", lambda: self.backend.get_all_trials(study_id, deepcopy, states))

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self.guard("get_n_trials", lambda: self.backend.get_n_trials(study_id, state))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self.guard("get_best_trial", lambda: self.backend.get_best_trial(study_id))

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self.guard("get_trial_params", lambda: self.backend.get_trial_params(trial_id))

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.guard("get_trial_user_attrs", lambda: self.backend.get_trial_user_attrs(trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self.guard("get_trial_system_attrs", lambda: self.backend.get_trial_system_attrs(trial_id))

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self.backend.check_trial_is_updatable(trial_id, trial_state)  # no database: nothing to guard

    def remove_session(self) -> None:
        self.backend.remove_session()  # no database: nothing to guard

    # -------------------------------------------------------------- heartbeats
    def record_heartbeat(self, trial_id: int) -> None:
        self.guard("record_heartbeat", lambda: self.backend.record_heartbeat(trial_id))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self.backend.get_heartbeat_interval()  # no database

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.backend.get_heartbeat_stale_trial_callback()  # no database

    # -------------------------------------------------------------- what Optuna's cache calls
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return self.create_trial(study_id, template_trial)

    def _set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                         distribution: optuna.distributions.BaseDistribution,
                         previous_distribution: optuna.distributions.BaseDistribution | None) -> None:
        self.guard("set_trial_param", lambda: self.backend._set_trial_param(
            trial_id, param_name, param_value_internal, distribution, previous_distribution))

    def _get_trials(self, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                    trial_id_greater_than: int) -> list[FrozenTrial]:
        return self.guard("get_all_trials", lambda: self.backend._get_trials(
            study_id, states, included_trial_ids, trial_id_greater_than))

    def _get_best_trial_id(self, study_id: int, direction: StudyDirection) -> int:
        return self.guard("get_best_trial", lambda: self.backend._get_best_trial_id(study_id, direction))

    # -------------------------------------------------------------- schema versions
    def get_current_version(self) -> str:
        return self.guard("get_current_version", self.backend.get_current_version)

    def get_head_version(self) -> str:
        return self.backend.get_head_version()  # read from the installed package

    def get_all_versions(self) -> list[str]:
        return self.backend.get_all_versions()  # read from the installed package

    def upgrade(self) -> None:
        self.backend.upgrade()  # a migration is never retried

