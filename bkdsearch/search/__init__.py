"""The orchestration: Optuna studies of a spec, workers, heartbeats and retries.

``storage`` (URLs -> RDB storages, secrets), ``heartbeat`` (heartbeats, the retry of trials
whose worker died), ``study`` (open, sampler, pruner, suggestions, trial lookup),
``objective`` (one trial: resolve -> flops -> teacher -> trainer -> objectives, artifacts,
resume) and ``worker`` (cap, ask/tell, failures, threads, Ctrl-C).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

if TYPE_CHECKING:  # what the lazy names resolve to, for type checkers and editors
    from ..errors import NotFound, StorageError, TrialsKeepFailing
    from .heartbeat import GRACE_S, HEARTBEAT_S, MAX_RETRY, fail_stale_trials, heartbeat_settings
    from .objective import Interrupted, TrialObjective
    from .storage import make_storage
    from .study import FINISHED, TrialSuggest, format_value, load_study, open_study, trial_config
    from .worker import INTERRUPTED, MAX_CONSECUTIVE_FAILURES, Worker, WorkerReport, artifact_folder, run_workers

# Imported on first use: the commands that only read a study (`status`, `report`) must not pay
# for torch, which only the objective and the worker need.
_WHERE = {
    **dict.fromkeys(("NotFound", "StorageError", "TrialsKeepFailing"), "bkdsearch.errors"),
    **dict.fromkeys(("GRACE_S", "HEARTBEAT_S", "MAX_RETRY", "fail_stale_trials", "heartbeat_settings"),
                    "bkdsearch.search.heartbeat"),
    **dict.fromkeys(("Interrupted", "TrialObjective"), "bkdsearch.search.objective"),
    "make_storage": "bkdsearch.search.storage",
    **dict.fromkeys(("FINISHED", "TrialSuggest", "format_value", "load_study", "open_study", "trial_config"),
                    "bkdsearch.search.study"),
    **dict.fromkeys(("INTERRUPTED", "MAX_CONSECUTIVE_FAILURES", "Worker", "WorkerReport", "artifact_folder",
                     "run_workers"), "bkdsearch.search.worker"),
}
"""The module each public name lives in."""

__all__ = [
    "FINISHED",
    "GRACE_S",
    "HEARTBEAT_S",
    "INTERRUPTED",
    "MAX_CONSECUTIVE_FAILURES",
    "MAX_RETRY",
    "Interrupted",
    "NotFound",
    "StorageError",
    "TrialObjective",
    "TrialSuggest",
    "TrialsKeepFailing",
    "Worker",
    "WorkerReport",
    "artifact_folder",
    "fail_stale_trials",
    "format_value",
    "heartbeat_settings",
    "load_study",
    "make_storage",
    "open_study",
    "run_workers",
    "trial_config",
]


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)
