"""Config errors: every one names the file and line it is about."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Where:
    """A place in a config file: its name as the user wrote it (or as ``@include`` resolved it) and
    a 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


class ConfigError(Exception):
    """One problem in a config, at one place. ``str()`` is ``file:line: message``."""

    def __init__(self, where: Where, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class ConfigSyntaxError(ConfigError):
    """The text cannot be parsed any further; parsing stops at the first one."""


class ConfigErrors(Exception):
    """Every problem found in a config; the node refuses to start while there is one."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors = sorted(errors, key=lambda e: e.where)
        super().__init__("\n".join(str(e) for e in self.errors))
