"""Reading presets: a name shipped in the package (``default``) or a path to a JSON file."""

from __future__ import annotations

import json
import os
from importlib import resources

from fluent_ld.launchdarkly.preset import Preset, PresetError, preset_from_dict

__all__ = ["BUILTIN_PRESETS", "load_preset"]

BUILTIN_PRESETS = ("default",)


def load_preset(name_or_path: str, base_dir: str = ".") -> Preset:
    """A built-in preset by name, else a preset file (relative paths from ``base_dir``, the folder
    of the config that names it). Raises :class:`PresetError` naming the file and the problem."""
    if name_or_path in BUILTIN_PRESETS:
        text = resources.files("fluent_ld.launchdarkly.preset").joinpath(f"{name_or_path}.json").read_text("utf-8")
        source = f"preset {name_or_path!r}"
    else:
        path = name_or_path if os.path.isabs(name_or_path) else os.path.join(base_dir, name_or_path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, ValueError) as exc:  # ValueError: a NUL or lone surrogate in the name
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a usable file name"
            if isinstance(exc, UnicodeDecodeError):
                reason = f"not UTF-8 text (byte {exc.start})"
            raise PresetError(f"preset {name_or_path!r} is neither a built-in preset ({', '.join(BUILTIN_PRESETS)}) nor a readable file: {reason}") from None
        source = path
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PresetError(f"{source}: not JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise PresetError(f"{source}: not a preset: nested too deeply") from None
    return preset_from_dict(data, source)
