"""Plugins read their configuration as attributes (``self.conf.flush_interval``), which no type
checker can see through: this test is that check. Every attribute a plugin module reads from its
configuration must be a parameter or a section its declaration has, so a typo fails here rather
than in production at the first request that reaches the line.

What counts as configuration, in each module that implements or serves a built-in plugin:
``conf`` and ``self.conf``, and names bound from them (``buffer = conf.buffer``,
``sec = self.conf.security``, ``for s in conf.server``), followed through nested sections.
"""

import ast
import importlib
from pathlib import Path

import pytest

from fluent_ld.config.params import Conf, Section
from fluent_ld.outputs.durable import DurableOutput
from fluent_ld.registry import BUILTIN, plugin_class

PACKAGE = Path(__file__).resolve().parent.parent / "fluent_ld"
# What a Conf has besides its parameters and sections.
CONF_MEMBERS = {name for name in dir(Conf) if not name.startswith("__")}


def _plugins():
    return [plugin_class(kind, name) for kind, types in BUILTIN.items() for name in types]


def _modules():
    """(module file, the sections its configuration reads must fit): each plugin's own module
    against its declaration; shared modules against every plugin that uses them."""
    out: dict[Path, list[Section]] = {}
    for cls in _plugins():
        out.setdefault(Path(importlib.import_module(cls.__module__).__file__), []).append(cls.section)
    durable = [cls.section for cls in _plugins() if issubclass(cls, DurableOutput)]
    out[PACKAGE / "outputs" / "durable.py"] = durable
    launchdarkly = [cls.section for cls in _plugins() if cls.type_name == "launchdarkly"]
    out[PACKAGE / "launchdarkly" / "mapping_config.py"] = launchdarkly
    return sorted(out.items())


class _Reads(ast.NodeVisitor):
    """Walks one module: every chain of attributes read from a configuration, checked against a
    section; reports the names it does not declare."""

    def __init__(self, section: Section, path: str) -> None:
        self.section = section
        self.path = path
        self.bound: dict[str, Section] = {}
        self.errors: list[str] = []
        self.checked = 0  # configuration reads seen

    def resolve(self, node: ast.AST) -> Section | None:
        """The section a configuration expression denotes, or None when it is not one."""
        if isinstance(node, ast.Name):
            if node.id == "conf":
                return self.section
            return self.bound.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr == "conf":
                return self.section
            parent = self.resolve(node.value)
            if parent is not None:
                return parent.section(node.attr)
        if isinstance(node, ast.Subscript):  # conf.server[0]
            return self.resolve(node.value)
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parent = self.resolve(node.value)
        if parent is not None and node.attr not in CONF_MEMBERS:
            self.checked += 1
            if parent.param(node.attr) is None and parent.section(node.attr) is None:
                self.errors.append(f"{self.path}:{node.lineno}: <{parent.name}> has no parameter or section {node.attr!r}")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        parent = self.resolve(node.value)
        key = node.slice.value if isinstance(node.slice, ast.Constant) else None
        if parent is not None and isinstance(key, str) and parent.param(key) is None and parent.section(key) is None:
            self.errors.append(f"{self.path}:{node.lineno}: <{parent.name}> has no parameter or section {key!r}")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        section = self.resolve(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name):
                if section is not None:
                    self.bound[target.id] = section
                else:
                    self.bound.pop(target.id, None)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        section = self.resolve(node.iter)
        if section is not None and isinstance(node.target, ast.Name):
            self.bound[node.target.id] = section
        self.generic_visit(node)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        section = self.resolve(node.iter)
        if isinstance(node.target, ast.Name):
            if section is not None:
                self.bound[node.target.id] = section
            else:
                self.bound.pop(node.target.id, None)
        self.generic_visit(node)

    def _scoped(self, node: ast.AST, parts: list[ast.AST]) -> None:
        """Names bound inside a comprehension or a function stay there."""
        saved = dict(self.bound)
        for part in parts:
            self.visit(part)
        self.bound = saved

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> None:
        self._scoped(node, [*node.generators, node.elt])  # the loop names before the element

    visit_SetComp = visit_ListComp
    visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._scoped(node, [*node.generators, node.key, node.value])

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._scoped(node, list(node.body))

    visit_AsyncFunctionDef = visit_FunctionDef


def unknown_reads(path: Path, sections: list[Section]) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    errors: list[str] = []
    for section in sections:
        reads = _Reads(section, path.relative_to(PACKAGE).as_posix())
        reads.visit(tree)
        assert reads.checked or path.name in ("null.py", "stdout.py"), f"{path}: no configuration read found (is the checker blind?)"
        errors += reads.errors
    return sorted(set(errors))


@pytest.mark.parametrize("path,sections", _modules(), ids=lambda v: v.relative_to(PACKAGE).as_posix() if isinstance(v, Path) else "")
def test_plugins_read_only_declared_parameters(path, sections):
    assert unknown_reads(path, sections) == []


def test_the_check_catches_a_typo(tmp_path):
    from fluent_ld.config.params import Param, String
    from fluent_ld.outputs.buffer import BUFFER

    section = Section("match", "x", params=(Param("host", String(), "h", "x"),), sections=(BUFFER,))
    module = PACKAGE / "_typo_probe.py"
    try:
        module.write_text(
            "def f(self, conf):\n"
            "    a = self.conf.host + conf.hots\n"
            "    buffer = conf.buffer\n"
            "    return buffer.flush_interval, buffer.flush_intervall, conf.buffer['@type'], conf.where\n"
        )
        assert unknown_reads(module, [section]) == [
            "_typo_probe.py:2: <match> has no parameter or section 'hots'",
            "_typo_probe.py:4: <buffer> has no parameter or section 'flush_intervall'",
        ]
    finally:
        module.unlink()
