"""The durable store of one output (SQLite, standard library), in pipeline order:

- :mod:`~fluent_ld.store.store`: :class:`Store`, what the outputs and the ``buffer`` and ``dlq``
  commands call, and the counters their backpressure reads;
- :mod:`~fluent_ld.store.writer`: the writer thread (group commit, coalesced appends) and the
  checkpointer beside it;
- :mod:`~fluent_ld.store.rows`: pending rows and frozen batches in SQLite;
- :mod:`~fluent_ld.store.batches`: what a cut or a split makes (pure) and :class:`Batch`;
- :mod:`~fluent_ld.store.dead_letters`: events and records that will not be sent;
- :mod:`~fluent_ld.store.schema`: the tables, how the database is opened, the migration from the
  previous layout, and the format a store records (which output's events it holds);
- :mod:`~fluent_ld.store.lock`: the lock an open file store holds, so no other process changes it;
- :mod:`~fluent_ld.store.paths`: the file of an output's store in its ``<buffer> path``.

Acknowledge only what is durable: an append returns once its commit's fsync has.
"""

from fluent_ld.pipeline.admission import DeadLetter
from fluent_ld.store.batches import MAX_BATCHES_PER_CUT, Batch
from fluent_ld.store.errors import StoreError, StoreFormatError, StoreInUseError
from fluent_ld.store.paths import store_file, worker_files
from fluent_ld.store.schema import PAGE_SIZE, SCHEMA_VERSION
from fluent_ld.store.store import Store

__all__ = [
    "MAX_BATCHES_PER_CUT",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "Batch",
    "DeadLetter",
    "Store",
    "StoreError",
    "StoreFormatError",
    "StoreInUseError",
    "store_file",
    "worker_files",
]
