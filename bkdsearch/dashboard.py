"""``bkdsearch dashboard``: optuna-dashboard on a study storage, read-only unless asked.

What this adds to a plain ``optuna-dashboard URL``:

- **read-only by default.** optuna-dashboard (0.21 included) has no read-only mode, so the
  dashboard is given a :class:`DashboardStorage` that refuses every write (deleting or
  renaming a study, a note, ``tell``, user attrs, ...) and a :class:`CheckpointStore` that
  refuses to write or remove files; on top of that, every request but GET, HEAD and
  OPTIONS is answered 403 (with the reason, which the page shows) before a route runs.
  Nothing changes. ``writable=True`` (``--writable``) lets them through.
- **checkpoints.** A trial's epoch checkpoint (in its study's artifact folder, see
  :func:`bkdsearch.search.worker.artifact_folder`, named by its ``checkpoint`` user attr)
  is listed among its artifacts (``trial-N-epoch-E.pt``): the storage view adds the
  ``artifacts:<id>`` system attr the dashboard lists, and the artifact store reads the file.
  Nothing is written to the study for this.
- **readable user attrs.** optuna-dashboard shows a JSON user attr in one line cut at 1024
  characters. Read-only, the view shows it whole (``", "`` separators: the browser wraps
  it), and every value inside it as an attr of its own, ``attr.key.leaf``
  (``run_config.train.lr``; FLOP counts with their unit, ``flops.train_step_mflops``): short,
  sortable columns. With ``writable`` the user attrs are shown as stored (what the
  dashboard copies back, e.g. when it renames a study, must be what is stored).
- **read-only, said on the page** (``dashboard_read_only.js``): a banner, write controls
  dimmed with the reason as tooltip, and a refusal's own text instead of "Failed to ...".
- a port already in use (or a host that cannot be listened on) is bad input before anything
  is printed, and the URL of the study (or of the dashboard) is printed before serving.
"""

from __future__ import annotations

import copy
import errno
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, BinaryIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from bottle import HTTPError
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .errors import BadInput, NotFound
from .search.optuna_seam import FrozenStudy, study_id_of
from .search.storage import clean, make_storage, url_secrets
from .search.worker import artifact_folder

STUDIES = Path("studies")

ARTIFACTS_ATTR_PREFIX = "artifacts:"
"""The prefix of the trial system attrs that name artifacts (what
``optuna.artifacts.upload_artifact`` writes and optuna-dashboard lists)."""

_ARTIFACT_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]*")

_FOLDERS_TTL_S = 10.0


class ReadOnlyRefused(HTTPError):
    """A write asked of a read-only dashboard: the HTTP API answers 403 with this reason."""

    def __init__(self, what: str) -> None:
        self.reason = (f"read-only dashboard: {what} refused; "
                       "restart it with `bkdsearch dashboard --writable` to allow changes")
        super().__init__(403, self.reason)

    def __str__(self) -> str:
        return self.reason


def readable_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Return ``attrs`` as the read-only dashboard shows them: a dict or list as its whole JSON
    text (optuna-dashboard cuts other values at 1024 characters), followed by every value
    inside a dict as an attr of its own, ``key.sub.leaf`` (short, readable, a sortable
    column); counts in ``flops`` carry their unit (``flops.student_mflops``,
    ``flops.student_params_m``). Other values unchanged."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if not isinstance(value, dict | list):
            out[key] = value
            continue
        out[key] = json.dumps(value, separators=(", ", ": "))
        if isinstance(value, dict):
            for path, leaf in _leaves(value, key):
                if path not in attrs:
                    out[path] = leaf
    return out


def _leaves(value: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """(dotted path, value) of every value inside ``value``, lists as JSON text; under
    ``flops``, numbers as millions with the unit in the name."""
    leaves: list[tuple[str, Any]] = []
    for sub, item in value.items():
        path = f"{prefix}.{sub}"
        if isinstance(item, dict):
            leaves += _leaves(item, path)
        elif isinstance(item, list):
            leaves.append((path, json.dumps(item, separators=(", ", ": "))))
        elif prefix.split(".")[0] == "flops" and isinstance(item, int | float) and not isinstance(item, bool):
            unit = "_m" if sub.endswith("params") else "_mflops"  # fvcore counts; parameters
            leaves.append((path + unit, float(f"{item / 1e6:.6g}")))
        elif item is not None:
            leaves.append((path, item))
    return leaves


class CheckpointStore:
    """An optuna artifact store over the checkpoint folders of the studies of ``storage``
    (:func:`bkdsearch.search.worker.artifact_folder` of each): reads find an artifact in whichever folder
    holds it. Read-only unless ``writable``; a new artifact (an upload through the
    dashboard) goes to the folder of ``study_name``, and needs one.

    Args:
        storage: the studies' storage (for their names).
        artifact_dir: ``--artifact-dir`` (see :func:`bkdsearch.search.worker.artifact_folder`).
        writable: allow ``write`` and ``remove``.
        study_name: the study whose folder takes new artifacts.
    """

    def __init__(self, storage: BaseStorage, artifact_dir: str | Path | None = None, *, writable: bool = False,
                 study_name: str | None = None) -> None:
        self.storage, self.artifact_dir, self.writable, self.study_name = storage, artifact_dir, writable, study_name
        self._lock = threading.Lock()
        self._folders: tuple[float, list[Path]] | None = None

    def folder(self, study_name: str) -> Path:
        """Return the checkpoint folder of ``study_name``."""
        return artifact_folder(study_name, self.artifact_dir, STUDIES)[1]

    def folders(self) -> list[Path]:
        """Return the checkpoint folders of every study in the storage (cached for 10 s)."""
        with self._lock:
            if self._folders is None or time.monotonic() - self._folders[0] > _FOLDERS_TTL_S:
                names = sorted(s.study_name for s in self.storage.get_all_studies())
                self._folders = (time.monotonic(), [self.folder(n) for n in names])
            return self._folders[1]

    def locate(self, artifact_id: str, folder: Path | None = None) -> Path | None:
        """Return the file of ``artifact_id`` (in ``folder``, else in any study's folder), or
        None when there is none (or the id is not a plain file name)."""
        if not isinstance(artifact_id, str) or not _ARTIFACT_ID.fullmatch(artifact_id):
            return None
        for base in [folder] if folder is not None else self.folders():
            path = base / artifact_id
            if path.is_file():
                return path
        return None

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """Return the artifact's file, opened for reading.

        Raises:
            ArtifactNotFound: no study folder holds it.
        """
        from optuna.artifacts.exceptions import ArtifactNotFound

        path = self.locate(artifact_id)
        if path is None:
            raise ArtifactNotFound(f"no artifact {artifact_id!r}")
        return path.open("rb")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Store a new artifact in the folder of ``study_name``.

        Raises:
            ReadOnlyRefused: the store is read-only, or no study was named (HTTP 403/400).
        """
        import shutil

        if not self.writable:
            raise ReadOnlyRefused("uploading an artifact is")
        if self.study_name is None or not _ARTIFACT_ID.fullmatch(artifact_id):
            raise HTTPError(400, "uploading an artifact needs the dashboard of one study: "
                                 "`bkdsearch dashboard --study NAME --writable`")
        folder = self.folder(self.study_name)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / artifact_id).open("wb") as f:
            shutil.copyfileobj(content_body, f)

    def remove(self, artifact_id: str) -> None:
        """Delete an artifact's file.

        Raises:
            ReadOnlyRefused: the store is read-only (HTTP 403). ArtifactNotFound: no such file.
        """
        from optuna.artifacts.exceptions import ArtifactNotFound

        if not self.writable:
            raise ReadOnlyRefused("removing an artifact is")
        path = self.locate(artifact_id)
        if path is None:
            raise ArtifactNotFound(f"no artifact {artifact_id!r}")
        path.unlink()


class DashboardStorage(BaseStorage):
    """What the dashboard sees of ``inner``: reads pass through (trials with their checkpoint
    files as artifacts, user attrs made :func:`readable_attrs` when read-only); writes raise
    :class:`ReadOnlyRefused` (HTTP 403) unless ``writable``.

    Args:
        inner: the storage.
        writable: let writes through.
        checkpoints: where checkpoint files are looked up (None: none are shown).
    """

    def __init__(self, inner: BaseStorage, *, writable: bool = False,
                 checkpoints: CheckpointStore | None = None) -> None:
        self.inner, self.writable, self.checkpoints = inner, writable, checkpoints

    # ------------------------------------------------------------------ the view

    def _study_view(self, study: FrozenStudy) -> FrozenStudy:
        if self.writable:
            return study
        view = copy.copy(study)
        view.user_attrs = readable_attrs(study.user_attrs)
        return view

    def _trial_view(self, trial: FrozenTrial, folder: Path | None = None) -> FrozenTrial:
        extra: dict[str, Any] = {}
        saved = trial.user_attrs.get("checkpoint")
        if self.checkpoints is not None and isinstance(saved, dict) and isinstance(saved.get("artifact_id"), str):
            artifact_id = saved["artifact_id"]
            key = ARTIFACTS_ATTR_PREFIX + artifact_id
            if key not in trial.system_attrs and self.checkpoints.locate(artifact_id, folder) is not None:
                extra[key] = json.dumps({"artifact_id": artifact_id,
                                         "filename": f"trial-{trial.number}-epoch-{saved.get('epoch', '?')}.pt",
                                         "mimetype": "application/octet-stream", "encoding": None})
        if not extra and self.writable:
            return trial
        view = copy.copy(trial)
        view.system_attrs = {**trial.system_attrs, **extra}
        if not self.writable:
            view.user_attrs = readable_attrs(trial.user_attrs)
        return view

    def _folder(self, study_id: int) -> Path | None:
        if self.checkpoints is None:
            return None
        return self.checkpoints.folder(self.inner.get_study_name_from_id(study_id))

    def _refuse(self, what: str) -> None:
        if not self.writable:
            raise ReadOnlyRefused(what)

    # ------------------------------------------------------------------ reads

    def get_all_studies(self) -> list[FrozenStudy]:
        """Return every study (by id, as optuna-dashboard orders those of an RDB storage)."""
        return [self._study_view(s) for s in sorted(self.inner.get_all_studies(), key=study_id_of)]

    def get_study_id_from_name(self, study_name: str) -> int:
        """Return the id of ``study_name``. Raises: KeyError: no such study."""
        return self.inner.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        """Return the name of study ``study_id``. Raises: KeyError: no such study."""
        return self.inner.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        """Return the study's directions. Raises: KeyError: no such study."""
        return self.inner.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        """Return the study's user attrs as stored. Raises: KeyError: no such study."""
        return self.inner.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        """Return the study's system attrs. Raises: KeyError: no such study."""
        return self.inner.get_study_system_attrs(study_id)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """Return the trial (viewed). Raises: KeyError: no such trial."""
        return self._trial_view(self.inner.get_trial(trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """Return the trial's system attrs with its checkpoint artifact. Raises: KeyError."""
        return self.get_trial(trial_id).system_attrs

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        """Return the study's trials (viewed). Raises: KeyError: no such study."""
        folder = self._folder(study_id)
        return [self._trial_view(t, folder) for t in self.inner.get_all_trials(study_id, deepcopy, states)]

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        """Return the best trial of a single-objective study (viewed).

        Raises:
            ValueError: no complete trial, or several objectives. KeyError: no such study.
        """
        return self._trial_view(self.inner.get_best_trial(study_id), self._folder(study_id))

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        """Return how many trials the study has (in ``state``). Raises: KeyError."""
        return self.inner.get_n_trials(study_id, state)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        """Return the id of trial ``trial_number`` of the study. Raises: KeyError."""
        return self.inner.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        """Raise UpdateFinishedTrialError when ``trial_state`` is finished."""
        self.inner.check_trial_is_updatable(trial_id, trial_state)

    def remove_session(self) -> None:
        """Release the inner storage's session."""
        self.inner.remove_session()

    # ------------------------------------------------------------------ writes (refused unless writable)

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        """Create a study; return its id. Raises: ReadOnlyRefused."""
        self._refuse("creating a study is")
        return self.inner.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        """Delete a study. Raises: ReadOnlyRefused. KeyError: no such study."""
        self._refuse("deleting a study is")
        self.inner.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        """Set a study user attr. Raises: ReadOnlyRefused."""
        self._refuse("changing a study's user attrs is")
        self.inner.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        """Set a study system attr (notes, artifacts, ...). Raises: ReadOnlyRefused."""
        self._refuse("changing a study (its notes, artifacts, preferences) is")
        self.inner.set_study_system_attr(study_id, key, value)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """Create a trial; return its id. Raises: ReadOnlyRefused."""
        self._refuse("creating a trial is")
        return self.inner.create_new_trial(study_id, template_trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        """Set a trial parameter. Raises: ReadOnlyRefused."""
        self._refuse("changing a trial's parameters is")
        self.inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Finish a trial (``tell``); return whether it changed. Raises: ReadOnlyRefused."""
        self._refuse("telling a trial's result is")
        return self.inner.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """Report an intermediate value. Raises: ReadOnlyRefused."""
        self._refuse("reporting a trial's values is")
        self.inner.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Set a trial user attr. Raises: ReadOnlyRefused."""
        self._refuse("changing a trial's user attrs is")
        self.inner.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Set a trial system attr. Raises: ReadOnlyRefused."""
        self._refuse("changing a trial (its artifacts, constraints) is")
        self.inner.set_trial_system_attr(trial_id, key, value)


# --------------------------------------------------------------------------- the server


class _Server(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request (the page polls while plots load)."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(WSGIRequestHandler):
    """Logs refused and failed requests only (the page polls every few seconds)."""

    def address_string(self) -> str:  # no reverse DNS lookup per request
        return str(self.client_address[0])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            failed = int(code) >= 400
        except (TypeError, ValueError):
            failed = True
        if failed:
            super().log_request(code, size)


def listen(host: str, port: int) -> WSGIServer:
    """Return a server bound to ``host``:``port`` and listening (an app is set later).

    Raises:
        BadInput: the port is in use or needs privileges, or ``host`` cannot be listened on.
    """
    cls = _Server6 if ":" in host else _Server
    try:
        return cls((host.strip("[]"), port), _Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            free = _free_port(host, port)
            hint = f"--port {free} is free" if free else "pick another --port"
            raise BadInput(f"--port {port} on {host} is already in use; {hint}") from None
        if exc.errno == errno.EACCES:
            raise BadInput(f"--port {port}: listening on port {port} needs privileges; "
                           "pick one above 1023") from None
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BadInput(f"--host {host}: cannot listen there ({reason})") from None


def _free_port(host: str, port: int) -> int | None:
    """The first port after ``port`` that ``host`` can listen on (of the next 20), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in range(port + 1, min(port + 21, 65536)):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host.strip("[]"), candidate))
            except OSError:
                continue
            return candidate
    return None


def _refuse_changes() -> None:
    """Bottle hook of a read-only dashboard: a request that may change something (any method
    but GET, HEAD, OPTIONS) is answered 403 with a JSON reason, which the page shows. The
    storage and the artifact store refuse writes anyway; this answers before a route starts
    (some, e.g. renaming a study, would answer 500 once a write is refused)."""
    from bottle import HTTPResponse, request

    if request.method not in ("GET", "HEAD", "OPTIONS"):
        reason = ReadOnlyRefused(f"{request.method} {request.path} is").reason
        raise HTTPResponse(json.dumps({"reason": reason}), status=403, headers={"Content-Type": "application/json"})


READ_ONLY_NOTICE = "Read-only dashboard: changes are refused. Restart it with `bkdsearch dashboard --writable`."



# Not inline: the page's content security policy admits scripts of its own origin only.
READ_ONLY_SCRIPT = "/bkdsearch/read-only.js"


def read_only_page(app: Callable[..., Any]) -> Callable[..., Any]:
    """Return the WSGI app ``app`` whose HTML pages load :data:`READ_ONLY_SCRIPT` (a banner
    with :data:`READ_ONLY_NOTICE`, write controls dimmed with it as tooltip, refusals shown
    with their text), served from here; other responses pass unchanged."""
    script = (Path(__file__).with_name("dashboard_read_only.js").read_text(encoding="utf-8")
              .replace("__NOTICE__", json.dumps(READ_ONLY_NOTICE)).encode())
    tag = f'<script defer src="{READ_ONLY_SCRIPT}"></script>'.encode()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == READ_ONLY_SCRIPT:
            start_response("200 OK", [("Content-Type", "text/javascript"), ("Content-Length", str(len(script)))])
            return [script]
        held: list[Any] = []  # start_response's arguments, until the page is changed
        body = app(environ, lambda *args: held.extend(args) or (lambda data: None))  # bottle returns its body
        status, headers, *exc_info = held
        named = {k.lower(): (k, v) for k, v in headers}
        if not (status.startswith("200") and named.get("content-type", ("", ""))[1].startswith("text/html")):
            start_response(status, headers, *exc_info)
            return body
        page = b"".join(body).replace(b"</head>", tag + b"</head>", 1)
        getattr(body, "close", lambda: None)()
        kept = [kv for k, kv in named.items() if k not in ("content-length", "etag", "last-modified")]
        start_response(status, [*kept, ("Content-Length", str(len(page)))], *exc_info)
        return [page]

    return wrapped


def dashboard_url(host: str, port: int, study_id: int | None = None) -> str:
    """Return the browser URL of the dashboard (of study ``study_id``) served on
    ``host``:``port``; a wildcard host (``0.0.0.0``, ``::``) is shown as this machine's name."""
    shown = host.strip("[]")
    if shown in ("", "0.0.0.0", "::"):
        shown = socket.gethostname()
    if ":" in shown:
        shown = f"[{shown}]"
    path = f"/dashboard/studies/{study_id}" if study_id is not None else "/dashboard"
    return f"http://{shown}:{port}{path}"


def serve(storage_url: str, *, host: str, port: int, study_name: str | None = None, writable: bool = False,
          artifact_dir: str | Path | None = None, log: Callable[[str], None] = print) -> None:
    """Serve optuna-dashboard on ``storage_url`` until Ctrl-C (then return).

    In this order: open the storage (never creating a database), look ``study_name`` up,
    listen on ``host``:``port``, then print (``log``) what is served and the URL: of the
    study when there is one, else of the dashboard.

    Args:
        storage_url: the studies' SQLAlchemy URL.
        host: address to listen on.
        port: TCP port.
        study_name: the study whose URL to print (and whose folder takes uploads).
        writable: let the dashboard change the storage and the artifacts (default: read-only).
        artifact_dir: ``--artifact-dir`` of the workers (checkpoints in ``DIR/<study>``).
        log: where the lines go.

    Raises:
        StorageError: the storage cannot be opened (or is a missing SQLite file).
        NotFound: no study ``study_name`` (the message lists those there).
        BadInput: the port is in use or ``host`` cannot be listened on.
    """
    from optuna_dashboard import wsgi

    shown = clean(storage_url, url_secrets(storage_url))
    inner = make_storage(storage_url, create=False)
    study_id = None
    if study_name is not None:
        try:
            study_id = inner.get_study_id_from_name(study_name)
        except KeyError:
            names = sorted(s.study_name for s in inner.get_all_studies())
            raise NotFound(f"no study {study_name!r} in {shown}; studies: {', '.join(names) or 'none'}") from None
    server = listen(host, port)
    try:
        checkpoints = CheckpointStore(inner, artifact_dir, writable=writable, study_name=study_name)
        storage = DashboardStorage(inner, writable=writable, checkpoints=checkpoints)
        app = wsgi(storage, artifact_store=checkpoints)
        if not writable:
            app.add_hook("before_request", _refuse_changes)
        server.set_app(app if writable else read_only_page(app))
        log(f"dashboard of {shown}")
        log("writable: changes allowed" if writable else "read-only (--writable to allow changes)")
        folder = (str(checkpoints.folder(study_name)) if study_name is not None
                  else str(checkpoints.folder("<study>")))
        log(f"checkpoints from {folder}")
        log(f"open {dashboard_url(host, port, study_id)}")
        log("Ctrl-C to stop")
        sys.stdout.flush()
        server.serve_forever()
    except KeyboardInterrupt:
        log("dashboard stopped")
    finally:
        server.server_close()
