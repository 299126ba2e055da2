"""The store's tables, how its database is opened, the migration from the previous layout, and
the format it records (which output's events it holds).

Durability: WAL journal with ``synchronous=FULL``: a commit returns after its fsync. ``path=None``
keeps the database in memory (``<buffer> @type memory``: lossy on a crash, said loudly in the docs).
"""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from fluent_ld.store.batches import pack_segments
from fluent_ld.store.errors import StoreError, StoreFormatError
from fluent_ld.store.rows import insert_pending

__all__ = ["PAGE_SIZE", "SCHEMA", "SCHEMA_VERSION", "WAL_FILE_LIMIT", "check_format", "connect", "connect_readonly", "describe", "migrate"]

# Pages of new stores. Event bytes are most of what a store writes (a 1,000-record request is
# ~1 MB): larger pages write, checkpoint and free them in fewer pieces than SQLite's 4 KiB default
# (a 20 MB append beside a small client's acks: median worst gap 75 -> 65 ms). 64 KiB went further
# for large appends but cost small commits (Message mode) 8%; 16 KiB costs them nothing
# measurable. A store keeps the page size it was created with.
PAGE_SIZE = 16384
# After a checkpoint the WAL file is truncated to this many bytes when it grew beyond.
WAL_FILE_LIMIT = 64 << 20

SCHEMA_VERSION = 2  # 1: batches held a copy of their events (``data``)
SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY,
    tag TEXT,
    lengths BLOB NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    oldest_ms INTEGER NOT NULL,
    admitted_at REAL NOT NULL,
    taken INTEGER NOT NULL DEFAULT 0,
    taken_bytes INTEGER NOT NULL DEFAULT 0,
    refs INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pending_open ON pending (id) WHERE taken < count;
CREATE TABLE IF NOT EXISTS pending_data (
    id INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    payload_id TEXT NOT NULL UNIQUE,
    tag TEXT,
    segments BLOB NOT NULL,
    lengths BLOB NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    oldest_ms INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    tag TEXT,
    time_ns INTEGER,
    record BLOB,
    event BLOB,
    payload_id TEXT
);
CREATE INDEX IF NOT EXISTS batches_due ON batches (next_attempt_at);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def table(name: str) -> str:
    start = SCHEMA.index(f"CREATE TABLE IF NOT EXISTS {name} (")
    return SCHEMA[start : SCHEMA.index(";", start)]


def connect(path: str | None, kind: str | None = None, separator: bytes = b",", framing: int = 2) -> sqlite3.Connection:
    """The writer's connection to the store at ``path`` (its folder exists; None: in memory), in
    this layout, its format checked against ``kind`` (see :func:`check_format`)."""
    if path is None:
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    try:
        _prepare(conn, path, kind, separator, framing)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: str | None, kind: str | None, separator: bytes, framing: int) -> None:
    if path is None:
        conn.execute("PRAGMA synchronous=OFF")
    else:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{path}: cannot use the WAL journal (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        # A large append (a 64 MiB request's events) is written to the WAL once, at commit:
        # spilling SQLite's page cache in the middle of it took 4-5x as long, and every small
        # append behind it waited.
        conn.execute("PRAGMA cache_spill=OFF")
        # The WAL is copied into the database by a thread of its own (the writer's Checkpointer),
        # not at the end of whichever commit crossed 1,000 pages: that commit's acks waited for it.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={WAL_FILE_LIMIT}")
    migrate(conn)
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    check_format(conn, path or "the memory store", kind, separator, framing)


def connect_readonly(path: str) -> sqlite3.Connection:
    """A connection that only reads the store at ``path``, beside the node that may be writing it
    (WAL: readers and the writer do not wait for each other). A store not made yet reads as an
    empty one."""
    if not os.path.exists(path):
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.executescript(SCHEMA)
        return conn
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30, check_same_thread=False)
    if "data" in {r[1] for r in conn.execute("PRAGMA table_info(batches)")}:
        conn.close()
        raise StoreError(f"{path} was written by an earlier fluent-ld: the node (or dlq replay or purge) brings it up to date when it opens it")
    return conn


def describe(separator: bytes, framing: int) -> str:
    """A store format in words, for messages."""
    if (separator, framing) == (b",", 2):
        return "JSON"
    if (separator, framing) == (b"", 0):
        return "msgpack"
    return f"fragments joined by {separator!r}, framing {framing}"


def check_format(conn: sqlite3.Connection, where: str, kind: str | None, separator: bytes, framing: int) -> None:
    """Record the format of a store that has none (a new one, or one from before formats were
    recorded: it always held the events of the output type that opened it), or refuse one that
    holds another output type's events (a reload that kept an ``@id`` and changed its ``@type``).
    ``kind`` None: neither (tests, reading commands)."""
    if kind is None:
        return
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('kind', 'separator', 'framing')").fetchall())
    if "kind" not in meta:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("kind", kind), ("separator", separator.hex()), ("framing", str(framing))],
        )
        conn.execute("COMMIT")
        return
    stored = (meta["kind"], bytes.fromhex(meta.get("separator", "")), int(meta.get("framing", "-1")))
    if stored != (kind, separator, framing):
        raise StoreFormatError(
            f"{where} holds {stored[0]} events ({describe(*stored[1:])}); this output writes {kind} "
            f"({describe(separator, framing)}): give it another @id or <buffer> path, or put @type "
            f"{stored[0]} back until the store is empty"
        )


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version to this layout, keeping every event and every
    batch's payload id (a batch that held a copy of its events becomes a row it refers to)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    columns = {r[1] for r in conn.execute("PRAGMA table_info(batches)")}
    if version >= SCHEMA_VERSION or "data" not in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE pending RENAME TO pending_v1")
    conn.execute(table("pending"))
    conn.execute(table("pending_data"))
    conn.execute(
        "INSERT INTO pending (id, tag, lengths, count, bytes, oldest_ms, admitted_at) "
        "SELECT id, tag, lengths, count, bytes, oldest_ms, admitted_at FROM pending_v1"
    )
    conn.execute("INSERT INTO pending_data (id, data) SELECT id, data FROM pending_v1")
    conn.execute("DROP TABLE pending_v1")
    conn.execute("ALTER TABLE batches RENAME TO batches_v1")
    conn.execute("DROP INDEX IF EXISTS batches_due")
    conn.execute(table("batches"))
    old = conn.execute(
        "SELECT id, payload_id, tag, data, lengths, count, bytes, oldest_ms, created_at, attempts, next_attempt_at, last_status, last_error FROM batches_v1"
    ).fetchall()
    for bid, payload_id, tag, data, lengths, count, nbytes, oldest_ms, created_at, attempts, next_at, status, error in old:
        row = insert_pending(conn, tag, data, lengths, count, nbytes, oldest_ms, created_at)
        conn.execute("UPDATE pending SET taken = count, taken_bytes = bytes, refs = 1 WHERE id = ?", (row,))
        conn.execute(
            "INSERT INTO batches (id, payload_id, tag, segments, lengths, count, bytes, oldest_ms, created_at, attempts, next_attempt_at, last_status, last_error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bid, payload_id, tag, pack_segments([(row, 0, count)]), lengths, count, nbytes, oldest_ms, created_at, attempts, next_at, status, error),
        )
    conn.execute("DROP TABLE batches_v1")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")
