"""What the store raises, typed by what the caller must do."""

from __future__ import annotations

__all__ = ["StoreError", "StoreFormatError", "StoreInUseError"]


class StoreError(Exception):
    """The store cannot take the operation (disk full, unreadable file): the caller must not ack."""


class StoreInUseError(StoreError):
    """Another process holds the store (a running node, or a command changing it): stop that
    process first. ``pid``: the holder's, None if it could not be read."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        super().__init__(f"{path} is in use by a running fluent-ld (pid {pid if pid is not None else 'unknown'})")


class StoreFormatError(StoreError):
    """The store holds another output type's events: this output needs a store of its own."""
