"""Reading a config from disk: the file, its ``@include``s, the environment, then checking it."""

from __future__ import annotations

import glob
import os
import socket
from collections.abc import Iterator, Mapping

from fluent_ld.config.errors import ConfigError, ConfigErrors, ConfigSyntaxError, Where
from fluent_ld.config.parser import Element, EvalContext, IncludedSource, parse
from fluent_ld.config.schema import NodeConfig, validate_root

__all__ = ["load", "load_text", "read_tree"]

_GLOB_CHARS = frozenset("*?[")
# No file name is longer (Linux PATH_MAX); globbing a longer pattern only costs time (quadratic
# in the "[" it holds: 25,000 took 8 s).
_MAX_PATH = 4096


def _read(path: str, where: Where | None) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or a NUL or unencodable character in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if where is None:
            raise ConfigErrors([ConfigError(Where(path, 0), f"cannot read the config: {reason}")]) from None
        raise ConfigSyntaxError(where, f"@include {path}: cannot read: {reason}") from None


def _include(pattern: str, where: Where) -> Iterator[IncludedSource]:
    """Fluentd's rule: relative to the including file's folder; globs sorted by name. A glob that
    matches nothing includes nothing; a plain path that does not exist is an error (Fluentd skips
    it silently, which hides typos)."""
    base = os.path.dirname(where.file)
    path = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
    path = os.path.normpath(path)
    if len(path) > _MAX_PATH:
        raise ConfigSyntaxError(where, f"@include: a path of {len(path)} characters is longer than any file name")
    if _GLOB_CHARS & set(pattern):
        try:
            names = sorted(glob.glob(path))
        except ValueError as exc:  # a NUL or an unencodable character in the pattern
            raise ConfigSyntaxError(where, f"@include {path}: cannot read: {exc}") from None
    else:
        names = [path]
    for name in names:
        if os.path.isdir(name):
            continue
        yield IncludedSource(name, _read(name, where))


def read_tree(path: str, env: Mapping[str, str] | None = None) -> Element:
    """Parse a config file and its includes into one tree."""
    context = EvalContext(os.environ if env is None else env, socket.gethostname())
    text = _read(path, None)
    try:
        return parse(text, path, context, _include)
    except ConfigSyntaxError as exc:
        raise ConfigErrors([exc]) from None


def load(path: str, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read and check a config file; raise :class:`ConfigErrors` with every problem found."""
    from fluent_ld.registry import catalogue

    return validate_root(read_tree(path, env), catalogue())


def load_text(text: str, name: str = "<config>", env: Mapping[str, str] | None = None) -> NodeConfig:
    """Check a config given as text (includes resolve relative to ``name``'s folder)."""
    from fluent_ld.registry import catalogue

    context = EvalContext(os.environ if env is None else env, socket.gethostname())
    try:
        root = parse(text, name, context, _include)
    except ConfigSyntaxError as exc:
        raise ConfigErrors([exc]) from None
    return validate_root(root, catalogue())
