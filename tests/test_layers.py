"""The pure core imports no I/O: no asyncio, sockets, files, clocks or logging (DESIGN.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fluent_ld"

# The core modules named in DESIGN.md, plus the config pieces that are pure by the same rule.
CORE = [
    "forward/codec",
    "forward/handshake",
    "preset",
    "mapping",
    "admission",
    "encode",
    "retry",
    "policy",
    "router",
    "config/errors",
    "config/parser",
    "config/params",
    "config/schema",
    "docs",
]

FORBIDDEN_MODULES = {
    "asyncio", "socket", "ssl", "selectors", "aiohttp", "sqlite3", "logging", "time", "threading",
    "subprocess", "multiprocessing", "os", "io", "pathlib", "glob", "shutil", "tempfile", "signal",
}
FORBIDDEN_CALLS = {"open", "print", "input"}


def core_files():
    """Each core module's file or package (a package: every file in it)."""
    files = []
    for name in CORE:
        module = PACKAGE / f"{name}.py"
        package = PACKAGE / name
        if module.exists():
            files.append(module)
        elif package.is_dir():
            files.extend(sorted(package.rglob("*.py")))
    return files


def core_module_names():
    return {"fluent_ld." + name.replace("/", ".") for name in CORE}


def violations(source: str, filename: str) -> list[str]:
    found = []
    allowed_internal = core_module_names()
    for node in ast.walk(ast.parse(source, filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            top = name.split(".")[0]
            if top in FORBIDDEN_MODULES:
                found.append(f"{filename}:{node.lineno}: imports {name}")
            elif top == "fluent_ld" and isinstance(node, ast.Import | ast.ImportFrom):
                if name == names[0] and not any(
                    name == m or name.startswith(m + ".") or m.startswith(name + ".") for m in allowed_internal
                ):
                    found.append(f"{filename}:{node.lineno}: imports the I/O module {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            found.append(f"{filename}:{node.lineno}: calls {node.func.id}()")
    return found


def test_the_checker_catches_io_in_a_core_module():
    bad = (
        "import asyncio\nfrom socket import socket\nimport os.path\nfrom fluent_ld.node import Node\n"
        "from fluent_ld.router import Router\n\ndef f():\n    return open('x').read()\n"
    )
    assert violations(bad, "bad.py") == [
        "bad.py:1: imports asyncio",
        "bad.py:2: imports socket",
        "bad.py:2: imports socket.socket",
        "bad.py:3: imports os.path",
        "bad.py:4: imports the I/O module fluent_ld.node",
        "bad.py:8: calls open()",
    ]


def test_core_modules_exist():
    present = {f.relative_to(PACKAGE).as_posix() for f in core_files()}
    assert {"router.py", "config/parser.py", "config/params.py"} <= present


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_core_module_does_no_io(path):
    assert violations(path.read_text(), path.relative_to(PACKAGE).as_posix()) == []
