"""A lock every process and machine that shares a study store sees: the database's own named locks
(PostgreSQL's advisory locks, MySQL's ``GET_LOCK``), or a lock file beside a SQLite database. It
guards what lives outside the database but must change with it, such as the kept models in an
artifact store: a bucket has no locks, and a lock file in a shared folder is only as good as the
network file system."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from collections.abc import Iterator

import sqlalchemy
from sqlalchemy.engine import make_url

from storage._store import PG_TIMEOUTS
from storage._store import sqlite_path
from storage._store import storage_url

# How each database takes and gives back a named lock, on one connection.
_NAMED_LOCK = ("SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)")
STATEMENTS = {
    "postgresql": ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
    "mysql": _NAMED_LOCK,
    "mariadb": _NAMED_LOCK,
}
# Where the store has no lock of its own (in-memory SQLite): the process's.
_LOCAL = threading.Lock()


def lock_key(name: str) -> int:
    """``name`` as PostgreSQL's advisory locks take it: a signed 64-bit number."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextlib.contextmanager
def exclusive(url: str | None, name: str) -> Iterator[None]:
    """Hold the lock ``name`` of the store at ``url`` while the block runs. A database lock is held
    by a connection of its own, so a process that dies releases it with that connection."""
    url = storage_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            with _LOCAL:
                yield
            return
        with open(path.with_name(f"{path.name}-lock"), "a") as file:  # beside tuner.db-journal
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)
        return
    if backend not in STATEMENTS:
        raise NotImplementedError(f"no store-wide lock for {backend} databases")
    take, give = STATEMENTS[backend]
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=PG_TIMEOUTS if backend == "postgresql" else {})
    arguments = {"key": lock_key(name), "name": name[:64]}
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(take), arguments)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(give), arguments)
    finally:
        engine.dispose()
