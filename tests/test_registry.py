"""The plugin table: every built-in @type is listed once, loads the class it names, and nothing is
registered by importing a module."""

import subprocess
import sys

import pytest

from fluent_ld.config.params import Section
from fluent_ld.plugin import Output
from fluent_ld.registry import BUILTIN, catalogue, plugin_class, register


@pytest.mark.parametrize("kind,type_name", [(k, t) for k, types in BUILTIN.items() for t in types])
def test_each_builtin_loads_the_class_it_names(kind, type_name):
    cls = plugin_class(kind, type_name)
    assert cls.kind == kind and cls.type_name == type_name
    assert BUILTIN[kind][type_name] == f"{cls.__module__}:{cls.__qualname__}"


def test_importing_the_registry_or_a_plugin_imports_no_other_plugin():
    code = "import sys, fluent_ld.registry, fluent_ld.sources.forward\nprint(','.join(sorted(sys.modules)))\n"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip().split(","))
    plugins = {path.split(":")[0] for types in BUILTIN.values() for path in types.values()}
    assert plugins & loaded == {"fluent_ld.sources.forward"}


def test_a_plugin_from_outside_the_table_is_registered_by_name_and_cannot_shadow_a_builtin():
    class Shadow(Output):
        type_name = "launchdarkly"
        summary = "x"
        section = Section("match", summary)

    with pytest.raises(ValueError, match="built in"):
        register(Shadow)

    class Extra(Output):
        type_name = "registry_test_extra"
        summary = "An output defined outside the package."
        section = Section("match", summary)

    register(Extra)
    assert plugin_class("output", "registry_test_extra") is Extra
    assert "registry_test_extra" in catalogue()["output"]
