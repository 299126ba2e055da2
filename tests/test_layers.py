"""The layers (DESIGN.md): the pure core imports no I/O (no asyncio, sockets, files, clocks,
randomness or logging: time and chance come in as arguments), and the edge's pieces do not import
each other (a source never imports an output, nor an output a source)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fluent_ld"

# The core modules named in DESIGN.md, plus the config pieces that are pure by the same rule.
CORE = [
    "forward/codec",
    "forward/handshake",
    "launchdarkly/preset/__init__",
    "launchdarkly/preset/schema",
    "launchdarkly/mapping",
    "launchdarkly/response",
    "launchdarkly/verification",
    "pipeline/admission",
    "pipeline/router",
    "encode",
    "outputs/retry",
    "outputs/outcome",
    "sources/webhook_policy",
    "config/errors",
    "config/parser",
    "config/params",
    "config/schema",
    "config/docs",
]

FORBIDDEN_MODULES = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "aiohttp",
    "sqlite3",
    "logging",
    "time",
    "threading",
    "subprocess",
    "multiprocessing",
    "os",
    "io",
    "pathlib",
    "glob",
    "shutil",
    "tempfile",
    "signal",
    "importlib",
    "random",
    "secrets",
    "uuid",
}
FORBIDDEN_CALLS = {"open", "print", "input", "__import__"}
# Clock reads through datetime (the module itself is fine: parsing and formatting dates is pure).
FORBIDDEN_METHODS = {"now", "utcnow", "today", "fromtimestamp", "utcfromtimestamp"}


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
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append(f"{filename}:{node.lineno}: a relative import (name the module in full)")
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
                if name == names[0] and not any(name == m or name.startswith(m + ".") or m.startswith(name + ".") for m in allowed_internal):
                    found.append(f"{filename}:{node.lineno}: imports the I/O module {name}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            found.append(f"{filename}:{node.lineno}: calls {node.func.id}()")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FORBIDDEN_METHODS:
            found.append(f"{filename}:{node.lineno}: reads the clock ({ast.unparse(node.func)}())")
    return found


def test_the_checker_catches_io_in_a_core_module():
    bad = (
        "import asyncio\nfrom socket import socket\nimport os.path\nfrom fluent_ld.pipeline.node import Node\n"
        "from fluent_ld.pipeline.router import Router\n\ndef f():\n    return open('x').read()\n"
        "from . import store\nimport importlib\nfrom random import random\nfrom datetime import datetime\n"
        "t = datetime.now()\nd = datetime.fromisoformat('2026-12-05')\n"
    )
    assert sorted(violations(bad, "bad.py")) == sorted(
        [
            "bad.py:1: imports asyncio",
            "bad.py:2: imports socket",
            "bad.py:2: imports socket.socket",
            "bad.py:3: imports os.path",
            "bad.py:4: imports the I/O module fluent_ld.pipeline.node",
            "bad.py:8: calls open()",
            "bad.py:9: a relative import (name the module in full)",
            "bad.py:10: imports importlib",
            "bad.py:11: imports random",
            "bad.py:11: imports random.random",
            "bad.py:13: reads the clock (datetime.now())",
        ]
    )


def test_core_modules_exist():
    present = {f.relative_to(PACKAGE).as_posix() for f in core_files()}
    assert {"pipeline/router.py", "config/parser.py", "config/params.py", "launchdarkly/mapping.py"} <= present


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_core_module_does_no_io(path):
    assert violations(path.read_text(), path.relative_to(PACKAGE).as_posix()) == []


# The edge: packages that must not import one another (DESIGN.md: each imports the core, never each
# other except through the wiring). Keys and values are module prefixes.
WIRING = ("fluent_ld.pipeline.node", "fluent_ld.pipeline.pool", "fluent_ld.pipeline.pool_process", "fluent_ld.service", "fluent_ld.cli", "fluent_ld.dev")
EDGE_RULES = {
    "fluent_ld.sources": ("fluent_ld.outputs", "fluent_ld.launchdarkly.output", "fluent_ld.launchdarkly.sender", "fluent_ld.store", *WIRING),
    "fluent_ld.outputs": ("fluent_ld.sources", "fluent_ld.launchdarkly", *WIRING),
    "fluent_ld.store": ("fluent_ld.sources", "fluent_ld.outputs", "fluent_ld.launchdarkly", *WIRING),
    "fluent_ld.launchdarkly": ("fluent_ld.sources", *WIRING),
    "fluent_ld.pipeline": ("fluent_ld.sources", "fluent_ld.outputs", "fluent_ld.service", "fluent_ld.cli", "fluent_ld.dev"),
    "fluent_ld.config": ("fluent_ld.sources", "fluent_ld.outputs", "fluent_ld.store", "fluent_ld.launchdarkly", *WIRING),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, filename: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def crossings(module: str, source: str, filename: str) -> list[str]:
    found = []
    for owner, banned in EDGE_RULES.items():
        if module != owner and not module.startswith(owner + "."):
            continue
        for line, name in imported(source, filename):
            hit = next((b for b in banned if name == b or name.startswith(b + ".")), None)
            if hit:
                found.append(f"{filename}:{line}: {owner} imports {name}")
    return sorted(set(found))


def test_the_edge_checker_catches_a_source_importing_an_output():
    bad = "from fluent_ld.outputs.durable import DurableOutput\nimport fluent_ld.plugin\n"
    assert crossings("fluent_ld.sources.forward", bad, "x.py") == [
        "x.py:1: fluent_ld.sources imports fluent_ld.outputs.durable",
        "x.py:1: fluent_ld.sources imports fluent_ld.outputs.durable.DurableOutput",
    ]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_edge_packages_do_not_import_each_other(path):
    assert crossings(module_name(path), path.read_text(), path.relative_to(PACKAGE).as_posix()) == []
