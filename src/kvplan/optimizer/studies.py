"""Persistent Optuna studies: storage URLs, kvplan's records in trials, and worker processes.

A search keeps its trials in an Optuna study. Without a storage the study lives in
memory and ends with the process. With a storage URL it is written to SQLite, an Optuna
journal file, PostgreSQL or MySQL, so a later run resumes it and several processes on
one or many hosts search it together. Every completed trial carries its deployment and
the cost model's prediction as user attributes, so a stored study can be ranked and
shown without evaluating anything again. The study itself records the plan it was made
for and, for a multi-objective search, its objectives. A run with a different plan or
other objectives is rejected instead of mixing incomparable trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import queue as queue_module
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
import typing
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from kvplan.spec.errors import KvplanError

if TYPE_CHECKING:
    import optuna

    from kvplan.costmodel.evaluate import Deployment, Evaluation
    from kvplan.optimizer.pareto import FrontSearch, ParetoResult
    from kvplan.optimizer.search import SearchResult
    from kvplan.spec.types import Plan

logger = logging.getLogger("kvplan")

# Version of the records below; it changes when their meaning changes.
STUDY_FORMAT = 1

# Study user attributes.
FORMAT_ATTR = "kvplan.format"
PLAN_ATTR = "kvplan.plan"
PLAN_SHA256_ATTR = "kvplan.plan_sha256"
OBJECTIVE_ATTR = "kvplan.objective"
# Canonical metric names of a multi-objective study, in the order of its directions.
# A single-objective study has no such attribute, and the plan's objective ranks it.
OBJECTIVES_ATTR = "kvplan.objectives"
# Digest of the cost model's source: trials stored by another version keep its predictions.
MODEL_SHA256_ATTR = "kvplan.model_sha256"

# Trial user attributes: the deployment as a dict, and the prediction with the part of
# the search that produced the trial ("tpe" or "polish").
CONFIG_ATTR = "config"
EVALUATION_ATTR = "evaluation"
SOURCE_TPE = "tpe"
SOURCE_POLISH = "polish"

# Name of the Optuna constraint of every trial: 0 when the deployment fits and meets the
# SLA, the number of missed SLA bounds (or 1 when it does not fit) otherwise.
CONSTRAINT_NAME = "fits_and_meets_sla"

# Schemes of --storage. A SQLite or journal URL names a file like SQLAlchemy's SQLite
# URLs: three slashes and a relative path, or four slashes and an absolute path.
JOURNAL_PREFIX = "journal:///"
SQLITE_PREFIX = "sqlite:///"
RDB_SCHEMES = ("postgresql", "mysql")

# Seconds a SQLite connection waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 60.0
# Attempts to open a server database. Two processes that create Optuna's tables at the
# same moment can collide once, and then the second attempt finds the tables made.
RDB_OPEN_ATTEMPTS = 3
RDB_RETRY_DELAY_S = 1.0

# Seconds the main process waits for interrupted workers to record their state and exit.
WORKER_STOP_TIMEOUT_S = 30.0
# Seconds between checks of the workers while none reports progress.
WORKER_POLL_INTERVAL_S = 0.2

# Exit code of an interrupted worker process, as a shell reports a process ended by SIGINT.
EXIT_INTERRUPTED = 128 + signal.SIGINT


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a search; ``result`` ranks the deployments of the completed trials.

    ``result`` is a ParetoResult for a multi-objective search. It is a KeyboardInterrupt,
    so a caller that does not look for it stops as on any Ctrl-C.
    """

    def __init__(self, result: SearchResult | ParetoResult, study_name: str | None, storage: str | None) -> None:
        super().__init__("search interrupted")
        self.result = result
        self.study_name = study_name
        self.storage = storage


# Ctrl-C


_stop_requested = False


def stop_requested() -> bool:
    """Return whether Ctrl-C asked the running search to stop (see :func:`graceful_stop`)."""
    return _stop_requested


def raise_if_stop_requested() -> None:
    if _stop_requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def graceful_stop(*, announce: bool, signals: Sequence[int] = (signal.SIGINT,)) -> Iterator[None]:
    """Turn the first Ctrl-C into a request that the search honours between batches of trials.

    Stopping between batches leaves no trial asked and not told. A second Ctrl-C raises
    KeyboardInterrupt at once. Outside the main thread, or when the program has its own
    SIGINT handler (or ignores SIGINT), nothing changes. Worker processes pass SIGTERM
    too, which the main process sends them to stop.
    """
    global _stop_requested
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        global _stop_requested
        if _stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if announce and not _stop_requested:
            sys.stderr.write("\nkvplan: stopping after the current batch of trials; press Ctrl-C again to "
                             "stop at once\n")
        _stop_requested = True

    _stop_requested = False
    previous = {number: signal.signal(number, request_stop) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _stop_requested = False


# Storage URLs


@dataclasses.dataclass(frozen=True)
class StorageURL:
    """A parsed ``--storage`` value.

    ``kind`` is ``sqlite``, ``journal`` or ``rdb`` (a database server). ``path`` is the
    file of a SQLite or journal storage, and None for a server.
    """

    url: str
    kind: str
    path: str | None

    @property
    def display(self) -> str:
        """Return the URL with any password replaced by ``***``, for messages."""
        if self.kind != "rdb":
            return self.url
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)


def parse_storage_url(text: str) -> StorageURL:
    """Parse a ``--storage`` value; raise ValueError with the fix when it is not one.

    Accepted: ``sqlite:///FILE``, ``journal:///FILE`` and ``postgresql://...`` or
    ``mysql://...`` (with an optional SQLAlchemy driver, as in ``postgresql+psycopg2://``).
    """
    url = text.strip()
    if url.startswith(JOURNAL_PREFIX):
        path = url[len(JOURNAL_PREFIX):]
        if not path:
            raise ValueError(f"storage URL {text!r} names no file; write for example journal:///study.log")
        return StorageURL(url, "journal", path)
    if url.startswith("sqlite://"):
        path = url[len(SQLITE_PREFIX):].split("?", 1)[0] if url.startswith(SQLITE_PREFIX) else ""
        if not path or path == ":memory:":
            raise ValueError(
                f"storage URL {text!r} names no file, and an in-memory SQLite database ends with the "
                "process; write for example sqlite:///study.db, or leave out --storage"
            )
        return StorageURL(url, "sqlite", path)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme.split("+", 1)[0] in RDB_SCHEMES:
        return StorageURL(url, "rdb", None)
    hint = ""
    if "://" not in url and url.endswith(".log"):
        hint = f"; for an Optuna journal file write journal:///{url}"
    elif "://" not in url and url.endswith((".db", ".sqlite", ".sqlite3")):
        hint = f"; for a SQLite file write sqlite:///{url}"
    raise ValueError(
        f"{text!r} is not a storage URL kvplan reads{hint}. Use sqlite:///FILE, journal:///FILE, "
        "postgresql://USER:PASSWORD@HOST/DATABASE or mysql+pymysql://USER:PASSWORD@HOST/DATABASE "
        "(four slashes before an absolute file path)"
    )


def open_storage(storage: StorageURL | str, *, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """Return the Optuna storage of a URL, creating a SQLite or journal file unless ``must_exist``.

    Raises KvplanError when the file is missing (with ``must_exist``), the database
    driver is not installed, or the server cannot be reached.
    """
    if isinstance(storage, str):
        try:
            storage = parse_storage_url(storage)
        except ValueError as error:
            raise KvplanError(str(error)) from None
    if storage.path is not None and must_exist and not os.path.isfile(storage.path):
        raise KvplanError(f"storage file {storage.path} not found (from {storage.url}); check the path")
    if storage.path is not None:
        folder = os.path.dirname(storage.path) or os.curdir
        if not os.path.isdir(folder):
            raise KvplanError(f"folder {folder} not found (from {storage.url}); create it or fix the path")
    if storage.kind == "journal":
        return _open_journal(storage)
    if storage.kind == "sqlite":
        return _open_rdb(storage, storage.url, engine_kwargs={"creator": _sqlite_connector(storage.path)})
    return _open_rdb(storage, _with_default_driver(storage.url), engine_kwargs={})


def _with_default_driver(url: str) -> str:
    """Return the URL with psycopg 3 as the driver of a ``postgresql://`` URL that names none.

    SQLAlchemy's default PostgreSQL driver is psycopg2 up to 2.0 and psycopg 3 from 2.1,
    so naming it keeps one driver, the one the ``postgres`` extra installs.
    """
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def close_storage(storage: optuna.storages.BaseStorage | None) -> None:
    """Close the database connections of a SQLite or server storage; other storages have none."""
    engine = getattr(storage, "engine", None)
    if engine is None:
        return
    storage.remove_session()
    engine.dispose()


@contextlib.contextmanager
def opened_storage(storage: StorageURL | str, *, must_exist: bool = False) -> Iterator[optuna.storages.BaseStorage]:
    """Open a storage with :func:`open_storage` and close its connections afterwards."""
    opened = open_storage(storage, must_exist=must_exist)
    try:
        yield opened
    finally:
        close_storage(opened)


def _open_journal(storage: StorageURL) -> optuna.storages.BaseStorage:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        return JournalStorage(JournalFileBackend(storage.path))
    except OSError as error:
        raise KvplanError(f"cannot open journal file {storage.path}: {error.strerror or error}") from None
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        raise KvplanError(f"{storage.path} is not an Optuna journal file ({error}); check the path") from None


def _sqlite_connector(path: str) -> Callable[[], Any]:
    """Return a function that opens the SQLite file for SQLAlchemy.

    Write-ahead logging lets readers run while a worker writes. With it,
    ``synchronous=NORMAL`` syncs to disk at checkpoints instead of on every commit: a
    power loss can drop the last trials, but never corrupts the file
    (https://www.sqlite.org/wal.html).
    """
    import sqlite3

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def _open_rdb(storage: StorageURL, url: str, *, engine_kwargs: dict[str, Any]) -> optuna.storages.BaseStorage:
    import optuna
    import sqlalchemy.exc

    for attempt in range(1, RDB_OPEN_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError as error:
            # Optuna raises ImportError from SQLAlchemy's ModuleNotFoundError for the driver.
            missing = error if isinstance(error, ModuleNotFoundError) else error.__cause__
            name = getattr(missing, "name", None) or "its database driver"
            raise KvplanError(_missing_driver_message(storage, name)) from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError) as error:
            if isinstance(error, sqlalchemy.exc.OperationalError) and _is_connection_error(error):
                raise KvplanError(f"cannot connect to storage {storage.display}: {_first_line(error)}") from None
            if attempt == RDB_OPEN_ATTEMPTS:
                raise KvplanError(f"cannot open storage {storage.display}: {_first_line(error)}") from None
            logger.info("opening storage %s failed (%s); retrying", storage.display, _first_line(error))
            time.sleep(RDB_RETRY_DELAY_S)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError) as error:
            raise KvplanError(f"invalid storage URL {storage.display}: {error}") from None
        except sqlalchemy.exc.DatabaseError as error:
            raise KvplanError(f"cannot open storage {storage.display}: {_first_line(error)}") from None
    raise AssertionError("unreachable")


def _is_connection_error(error: Exception) -> bool:
    text = str(error).lower()
    return any(marker in text for marker in ("could not connect", "connection refused", "can't connect",
                                             "could not translate host", "timeout expired",
                                             "password authentication failed", "does not exist",
                                             "unable to open database file"))


def _missing_driver_message(storage: StorageURL, module: str) -> str:
    if storage.url.startswith("postgresql://"):
        return (f"the PostgreSQL driver ({module}) is not installed; install psycopg 3 with "
                "pip install 'kvplan[postgres]'")
    if storage.url.startswith("postgresql"):
        return (f"the PostgreSQL driver {module} that the URL names is not installed; install it, or write "
                "postgresql:// and install psycopg 3 with pip install 'kvplan[postgres]'")
    if storage.url.startswith("mysql"):
        return (f"the MySQL driver ({module}) is not installed; install PyMySQL (pip install pymysql) "
                "and write mysql+pymysql://... as the storage URL")
    return f"the database driver {module} for {storage.display} is not installed"


def _first_line(error: Exception) -> str:
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__


# The plan of a study


# SearchSpace fields that are None unless the plan's search section lists them.
OPTIONAL_SEARCH_KEYS = ("node", "node_gpu_budgets", "kv_cache_dtype", "watermark", "require_full_prompt_admission",
                        "enable_expert_parallel")


def plan_document(plan: Plan) -> dict[str, Any]:
    """Return the plan as a JSON-compatible dict that :func:`plan_from_document` reads back."""
    document = json.loads(json.dumps(dataclasses.asdict(plan)))
    # Search settings that a plan does not list are left out, so the digest of a plan
    # without them is the one that kvplan versions before them stored.
    search = document.get("search", {})
    for key in OPTIONAL_SEARCH_KEYS:
        if search.get(key) is None:
            search.pop(key, None)
    return document


def plan_from_document(document: dict[str, Any]) -> Plan:
    """Rebuild the Plan that :func:`plan_document` wrote; raise KvplanError when it cannot."""
    from kvplan.spec.types import Plan

    try:
        return _decode(Plan, document)
    except (KeyError, TypeError, ValueError) as error:
        raise KvplanError(f"the study's plan record cannot be read by this kvplan version ({error})") from None


def _decode(annotation: Any, value: Any) -> Any:
    """Convert JSON ``value`` to ``annotation``: dataclasses, tuples, unions, dicts and scalars."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _decode_union([argument for argument in arguments if argument is not type(None)], value)
    if origin is typing.Literal:
        return value
    if origin is tuple:
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_decode(arguments[0], item) for item in value)
        return tuple(_decode(argument, item) for argument, item in zip(arguments, value))
    if origin is dict:
        return {key: _decode(arguments[1], item) for key, item in value.items()}
    if dataclasses.is_dataclass(annotation):
        hints = typing.get_type_hints(annotation)
        fields = {field.name for field in dataclasses.fields(annotation)}
        return annotation(**{key: _decode(hints[key], item) for key, item in value.items() if key in fields})
    if annotation is float:
        return float(value)
    return value


def _decode_union(candidates: list[Any], value: Any) -> Any:
    for candidate in candidates:
        if dataclasses.is_dataclass(candidate) and isinstance(value, dict):
            return _decode(candidate, value)
        if typing.get_origin(candidate) is tuple and isinstance(value, list):
            return _decode(candidate, value)
        if typing.get_origin(candidate) is dict and isinstance(value, dict):
            return _decode(candidate, value)
        if candidate in (int, float, str, bool) and isinstance(value, candidate):
            return value
    if float in candidates and isinstance(value, int):
        return float(value)
    raise TypeError(f"value {value!r} matches none of {candidates}")


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    """Return the part of a plan document that changes predictions or their ranking.

    The plan's name, source file and ``deployed`` section, and the path of the model's
    config.json, are left out. Renaming or moving the plan, or running it from another
    folder or host, therefore keeps its studies. The config's content is in the architecture.
    """
    document = {key: value for key, value in document.items() if key not in ("name", "source", "deployed")}
    model = document.get("model")
    if isinstance(model, dict):
        document["model"] = {key: value for key, value in model.items() if key != "config_path"}
    return document


def plan_sha256(plan: Plan) -> str:
    """Return a digest of everything in the plan that changes predictions or their ranking."""
    text = json.dumps(_comparable(plan_document(plan)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def model_sha256() -> str:
    """Return a digest of the cost model's source files, which set every prediction."""
    from importlib import resources

    digest = hashlib.sha256()
    package = resources.files("kvplan.costmodel")
    for entry in sorted(package.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".py"):
            digest.update(entry.name.encode())
            digest.update(entry.read_bytes())
    return digest.hexdigest()


def _plan_differences(stored: dict[str, Any], plan: Plan) -> list[str]:
    stored = _comparable(stored)
    current = _comparable(plan_document(plan))
    keys = sorted(set(stored) | set(current))
    return [key for key in keys if stored.get(key) != current.get(key)]


# Opening studies


def default_study_name(plan: Plan) -> str:
    return plan.name


def create_or_load_study(
    plan: Plan,
    storage: optuna.storages.BaseStorage | None,
    study_name: str | None,
    directions: Sequence[str],
    sampler: optuna.samplers.BaseSampler,
    *,
    storage_display: str = "memory",
    objectives: Sequence[str] | None = None,
) -> optuna.Study:
    """Create the plan's study in ``storage``, or load it when it exists and matches the plan.

    ``objectives`` are the canonical metric names of a multi-objective search, one per
    direction, and None for a search of the plan's single objective.

    Raises KvplanError when a study of that name exists but was made by another program,
    for a plan with different predictions, for other objectives, or optimizes in other
    directions.
    """
    import optuna

    name = study_name or default_study_name(plan)
    study = optuna.create_study(storage=storage, study_name=name, directions=list(directions), sampler=sampler,
                                load_if_exists=True)
    attrs = study.user_attrs
    fingerprint = plan_sha256(plan)
    if PLAN_SHA256_ATTR not in attrs and study.trials:
        # Another kvplan process may have created the study and recorded its plan since the
        # first read.
        attrs = study.user_attrs
        if PLAN_SHA256_ATTR not in attrs:
            raise KvplanError(
                f"study {name!r} in {storage_display} was not made by kvplan (it has no plan record); "
                "choose another --study-name"
            )
    if PLAN_SHA256_ATTR not in attrs:
        # The plan goes in before any trial, so a study with trials always has it.
        study.set_user_attr(FORMAT_ATTR, STUDY_FORMAT)
        if objectives is None:
            study.set_user_attr(OBJECTIVE_ATTR, plan.objective)
        else:
            study.set_user_attr(OBJECTIVES_ATTR, list(objectives))
        study.set_user_attr(PLAN_ATTR, plan_document(plan))
        study.set_user_attr(MODEL_SHA256_ATTR, model_sha256())
        study.set_user_attr(PLAN_SHA256_ATTR, fingerprint)
        return study
    # Studies stored by earlier versions have a digest that covers the config path too,
    # so a digest that differs is compared field by field before it is refused.
    differences = [] if attrs[PLAN_SHA256_ATTR] == fingerprint else _plan_differences(attrs.get(PLAN_ATTR) or {}, plan)
    if differences or (attrs[PLAN_SHA256_ATTR] != fingerprint and not attrs.get(PLAN_ATTR)):
        where = f" (they differ in {', '.join(differences)})" if differences else ""
        raise KvplanError(
            f"study {name!r} in {storage_display} was made for another version of the plan{where}, so its "
            "trials do not apply; choose another --study-name, or delete the study with "
            f"optuna delete-study --study-name {name!r} --storage URL"
        )
    _check_objectives(name, storage_display, attrs, plan, objectives)
    if attrs.get(MODEL_SHA256_ATTR) != model_sha256():
        logger.warning(
            "study %r in %s was made by another version of kvplan's cost model; its stored trials keep "
            "that version's predictions and may rank differently from new ones. Choose another "
            "--study-name to search with the current model alone", name, storage_display)
    stored_directions = [direction.name.lower() for direction in study.directions]
    if stored_directions != list(directions):
        raise KvplanError(
            f"study {name!r} in {storage_display} optimizes {', '.join(stored_directions)}, not "
            f"{', '.join(directions)}; choose another --study-name"
        )
    return study


def _check_objectives(name: str, storage_display: str, attrs: dict[str, Any], plan: Plan,
                      objectives: Sequence[str] | None) -> None:
    """Raise KvplanError when a search's objectives differ from those the study was made for."""
    stored = attrs.get(OBJECTIVES_ATTR)
    requested = list(objectives) if objectives is not None else None
    if stored == requested:
        return
    where = f"study {name!r} in {storage_display}"
    fix = "or choose another --study-name for a new study"
    if stored is None:
        raise KvplanError(
            f"{where} is a single-objective study of the plan's objective {attrs.get(OBJECTIVE_ATTR)}, so a "
            f"multi-objective search of {', '.join(requested)} cannot add to it; drop the --objective options "
            f"to resume it, {fix}"
        )
    options = " ".join(f"--objective {metric}" for metric in stored)
    if requested is None:
        raise KvplanError(
            f"{where} is a multi-objective study of {', '.join(stored)}, so a search of the plan's single "
            f"objective {plan.objective} cannot add to it; pass {options} to resume it, {fix}"
        )
    raise KvplanError(
        f"{where} is a multi-objective study of {', '.join(stored)}, not of {', '.join(requested)}; pass "
        f"{options} to resume it, {fix}"
    )


def study_objectives(study: optuna.Study) -> tuple[str, ...] | None:
    """Return the objectives of a multi-objective kvplan study, or None for a single-objective one."""
    stored = study.user_attrs.get(OBJECTIVES_ATTR)
    if stored is None:
        return None
    if not isinstance(stored, list) or not all(isinstance(name, str) for name in stored):
        raise KvplanError(f"study {study.study_name!r} stores objectives this kvplan version cannot read "
                          f"({stored!r})")
    return tuple(stored)


def load_kvplan_study(storage: optuna.storages.BaseStorage, study_name: str | None, *,
                      storage_display: str) -> optuna.Study:
    """Load a study made by kvplan; without a name, the only study in the storage."""
    import optuna

    names = optuna.get_all_study_names(storage)
    if study_name is None:
        if not names:
            raise KvplanError(f"storage {storage_display} contains no study")
        if len(names) > 1:
            listed = ", ".join(sorted(names))
            raise KvplanError(f"storage {storage_display} contains {len(names)} studies ({listed}); "
                              "choose one with --study-name")
        study_name = names[0]
    elif study_name not in names:
        listed = ", ".join(sorted(names)) or "none"
        raise KvplanError(f"study {study_name!r} not found in {storage_display} (studies: {listed})")
    study = optuna.load_study(study_name=study_name, storage=storage)
    if PLAN_ATTR not in study.user_attrs:
        raise KvplanError(f"study {study_name!r} in {storage_display} was not made by kvplan (it has no plan "
                          "record)")
    return study


def study_plan(study: optuna.Study) -> Plan:
    return plan_from_document(study.user_attrs[PLAN_ATTR])


@contextlib.contextmanager
def search_storage(storage: str | None, n_jobs: int) -> Iterator[StorageURL | None]:
    """Yield the storage a search uses: the given URL, or a temporary journal file for workers.

    Worker processes need a storage they share, so a search with ``n_jobs > 1`` and no
    storage gets a journal file in a temporary folder, removed afterwards.
    """
    if storage is not None:
        try:
            yield parse_storage_url(storage)
        except ValueError as error:
            raise KvplanError(str(error)) from None
        return
    if n_jobs <= 1:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="kvplan-study-")
    try:
        yield StorageURL(f"{JOURNAL_PREFIX}{os.path.join(folder, 'study.log')}", "journal",
                         os.path.join(folder, "study.log"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def opened_study(plan: Plan, storage: str | None, study_name: str | None, n_jobs: int, directions: Sequence[str],
                 sampler: optuna.samplers.BaseSampler, *, objectives: Sequence[str] | None = None,
                 ) -> Iterator[tuple[optuna.Study, StorageURL | None]]:
    """Yield the study a search runs in, with the URL that worker processes open, and close it after.

    The URL is None for an in-memory study. ``objectives`` are those of a multi-objective
    search (see :func:`create_or_load_study`).
    """
    with search_storage(storage, n_jobs) as url:
        opened = open_storage(url) if url is not None else None
        try:
            study = create_or_load_study(plan, opened, study_name, directions, sampler,
                                         storage_display=url.display if url is not None else "memory",
                                         objectives=objectives)
            yield study, url
        finally:
            close_storage(opened)


# Records in trials


def record_evaluation(trial: optuna.Trial, evaluation: Evaluation, violation: float, source: str) -> None:
    """Store the deployment, its prediction and the SLA constraint in an asked trial."""
    trial.set_user_attr(CONFIG_ATTR, evaluation.config.to_dict())
    trial.set_user_attr(EVALUATION_ATTR, _evaluation_record(evaluation, source))
    trial.set_constraint(CONSTRAINT_NAME, violation)


def _evaluation_record(evaluation: Evaluation, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "feasible": evaluation.feasible,
        "infeasible_reason": evaluation.infeasible_reason,
        "metrics": evaluation.metrics,
    }


def completed_trial(params: dict[str, Any], distributions: dict[str, Any], value: float | Sequence[float],
                    evaluation: Evaluation, violation: float, source: str) -> optuna.trial.FrozenTrial:
    """Return a complete trial for a deployment evaluated outside the sampler, for ``Study.add_trials``.

    ``value`` is a sequence with one value per objective in a multi-objective study.
    """
    import optuna

    values = list(value) if isinstance(value, Sequence) else [value]
    return optuna.trial.create_trial(
        params=params,
        distributions=distributions,
        values=values,
        user_attrs={CONFIG_ATTR: evaluation.config.to_dict(), EVALUATION_ATTR: _evaluation_record(evaluation, source)},
        constraints={CONSTRAINT_NAME: violation},
    )


def fail_trials(study: optuna.Study, trials: Sequence[optuna.Trial]) -> None:
    """Mark asked trials that will not be told a value as failed, so no worker waits on them."""
    import optuna

    for trial in trials:
        try:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except (RuntimeError, ValueError):
            # Already finished, for example told before the interrupt arrived.
            continue


def trial_evaluation(trial: optuna.trial.FrozenTrial) -> Evaluation | None:
    """Rebuild the Evaluation a kvplan trial stores, or None for a trial without one."""
    from kvplan.costmodel.evaluate import Deployment, Evaluation

    config = trial.user_attrs.get(CONFIG_ATTR)
    record = trial.user_attrs.get(EVALUATION_ATTR)
    if not isinstance(config, dict) or not isinstance(record, dict):
        return None
    try:
        deployment = Deployment(**config)
    except TypeError as error:
        raise KvplanError(f"trial {trial.number} stores a deployment this kvplan version cannot read "
                          f"({error})") from None
    return Evaluation(deployment, bool(record.get("feasible")), record.get("infeasible_reason"),
                      dict(record.get("metrics") or {}))


def trial_source(trial: optuna.trial.FrozenTrial) -> str | None:
    record = trial.user_attrs.get(EVALUATION_ATTR)
    return record.get("source") if isinstance(record, dict) else None


def completed_kvplan_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    import optuna

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [trial for trial in trials if CONFIG_ATTR in trial.user_attrs]


def evaluations_in_study(study: optuna.Study) -> dict[Deployment, Evaluation]:
    """Return the evaluation of every deployment the study's completed trials hold."""
    evaluated: dict[Deployment, Evaluation] = {}
    for trial in completed_kvplan_trials(study):
        evaluation = trial_evaluation(trial)
        if evaluation is not None:
            evaluated.setdefault(evaluation.config, evaluation)
    return evaluated


def result_of_study(study: optuna.Study, plan: Plan | None = None) -> SearchResult | ParetoResult:
    """Rank the deployments of a stored study, without evaluating anything.

    Returns a ParetoResult, the Pareto front first, for a multi-objective study.
    """
    from kvplan.optimizer.search import _rank, _result
    from kvplan.optimizer.space import build_search_space

    plan = plan or study_plan(study)
    evaluated = evaluations_in_study(study)
    objectives = study_objectives(study)
    if objectives is not None:
        from kvplan.optimizer import pareto

        metrics = pareto.resolve_objectives(plan, objectives)
        return pareto._result(plan, metrics, evaluated.values(), pareto.DEFAULT_SAMPLER, build_search_space(plan).size)
    ranked = _rank(plan, evaluated.values())
    return _result(plan, ranked, "tpe", len(evaluated), build_search_space(plan).size)


# Worker processes


ProgressCallback = Callable[[int, int, "float | None"], None]


def trial_shares(trials: int, n_jobs: int) -> list[int]:
    """Split ``trials`` among at most ``n_jobs`` workers, the first ones taking the remainder."""
    workers = min(n_jobs, trials)
    return [trials // workers + (1 if index < trials % workers else 0) for index in range(workers)]


def run_workers(
    plan: Plan,
    storage: StorageURL,
    study_name: str,
    trials: int,
    seed: int,
    n_jobs: int,
    direction: str,
    *,
    progress: ProgressCallback | None = None,
    initial_best: Any = None,
    front_search: FrontSearch | None = None,
) -> None:
    """Run the sampler in ``n_jobs`` local processes that share the study in ``storage``.

    Worker i seeds its sampler with ``seed + i`` so that workers do not ask for the same
    deployments. On Ctrl-C (see :func:`graceful_stop`) the workers finish their batch,
    and KeyboardInterrupt is raised once they have exited. Raises KvplanError when a
    worker fails.

    With ``front_search`` the workers search for the Pareto front of its objectives and
    ``direction`` is unused. Each worker then reports the front of the deployments it
    knows, ``initial_best`` is the study's front before the search (see
    :func:`kvplan.optimizer.pareto.front_entries`), and ``progress`` gets the size of the
    front that the reported fronts make up together in place of the best value.
    """
    import multiprocessing

    # A fresh interpreter per worker: JAX's threads do not survive fork().
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    shares = trial_shares(trials, n_jobs)
    workers = [
        context.Process(target=_worker_main, name=f"kvplan-worker-{index}", daemon=True,
                        args=(plan, storage, study_name, share, seed + index, index, messages, front_search))
        for index, share in enumerate(shares)
    ]
    done = [0] * len(workers)
    bests: list[Any] = [initial_best] * len(workers)
    errors: dict[int, str] = {}
    try:
        for worker in workers:
            worker.start()
        logger.info("started %d worker processes for study %s", len(workers), study_name)
        while any(worker.is_alive() for worker in workers) or not messages.empty():
            raise_if_stop_requested()
            try:
                message = messages.get(timeout=WORKER_POLL_INTERVAL_S)
            except queue_module.Empty:
                continue
            kind, index = message[0], message[1]
            if kind == "progress":
                done[index], bests[index] = message[2], message[3]
                if progress is not None:
                    best = _best_of(bests, direction) if front_search is None else front_search.merged_size(bests)
                    progress(sum(done), trials, best)
            elif kind == "error":
                errors[index] = message[2]
    except KeyboardInterrupt:
        _stop_workers(workers)
        raise
    finally:
        messages.close()
    interrupted = False
    for index, worker in enumerate(workers):
        worker.join()
        if worker.exitcode == EXIT_INTERRUPTED:
            interrupted = True
        elif worker.exitcode in (-signal.SIGINT, -signal.SIGTERM):
            # Stopped by a signal that arrived after its search had ended.
            interrupted = True
        elif worker.exitcode != 0 and index not in errors:
            errors[index] = f"exited with code {worker.exitcode}"
    if errors:
        index, error = min(errors.items())
        raise KvplanError(f"worker {index} of {len(workers)} failed: {error}")
    if interrupted:
        raise KeyboardInterrupt


def _best_of(values: Sequence[float | None], direction: str) -> float | None:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if not finite:
        return None
    return min(finite) if direction == "minimize" else max(finite)


def _stop_workers(workers: Sequence[Any]) -> None:
    """Ask the workers to stop after their batch, wait for them, and kill any that hang."""
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logger.warning("worker %s did not stop within %.0f s; killing it, so its last batch of trials "
                           "stays in the RUNNING state", worker.name, WORKER_STOP_TIMEOUT_S)
            worker.kill()
            worker.join()


def _worker_main(plan: Plan, storage: StorageURL, study_name: str, trials: int, seed: int, index: int,
                 messages: Any, front_search: FrontSearch | None = None) -> None:
    """Search ``trials`` trials of the shared study in a worker process.

    Ctrl-C and the SIGTERM of the main process stop the worker after its current batch,
    with exit code ``EXIT_INTERRUPTED``.
    """
    exit_code = 0
    try:
        logging.basicConfig(level=logging.WARNING, format="kvplan: %(message)s", stream=sys.stderr)

        def report(done: int, best: Any) -> None:
            messages.put(("progress", index, done, best))

        with graceful_stop(announce=False, signals=(signal.SIGINT, signal.SIGTERM)):
            if front_search is None:
                from kvplan.optimizer.search import search_in_study

                search_in_study(plan, storage, study_name, trials, seed, on_batch=report)
            else:
                from kvplan.optimizer.pareto import search_front_in_study

                search_front_in_study(plan, storage, study_name, front_search, trials, seed, on_batch=report)
    except KeyboardInterrupt:
        exit_code = EXIT_INTERRUPTED
    except BaseException as error:  # noqa: BLE001 - the main process reports it
        text = str(error) if isinstance(error, KvplanError) else f"{type(error).__name__}: {error}"
        messages.put(("error", index, text))
        exit_code = 1
    # The search is over; a late Ctrl-C must not cut short the hand-over of the messages.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    messages.close()
    messages.join_thread()
    sys.exit(exit_code)
