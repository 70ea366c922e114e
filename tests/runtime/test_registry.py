"""Calculator registry: names, duplicates, entry-point discovery and broken plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovms_graph.calculator import Calculator
from ovms_graph.errors import RegistryError
from ovms_graph.registry import Registry
from tests.runtime import fakes
from tests.runtime.plugin_dist import write_plugin

PLUGIN = '''
from ovms_graph.calculator import Calculator, Port

class Shout(Calculator):
    inputs = (Port("TEXT", str, "text"),)
    outputs = (Port("TEXT", str, "text"),)

    def process(self, cc):
        cc.emit("TEXT", cc.inputs["TEXT"].upper() + "!")
'''


def test_duplicate_names_name_both_modules() -> None:
    registry = fakes.registry(fakes.Upper)

    class Upper(Calculator):  # same registry name, another class
        pass

    with pytest.raises(RegistryError) as info:
        registry.register(Upper)
    assert str(info.value) == (
        'calculator "Upper" is registered twice: by tests.runtime.fakes.Upper and by '
        "tests.runtime.test_registry.test_duplicate_names_name_both_modules.<locals>.Upper")


def test_unknown_name_lists_the_closest() -> None:
    registry = fakes.registry()
    with pytest.raises(RegistryError) as info:
        registry.get("Spilt")
    assert str(info.value).startswith('unknown calculator "Spilt"; did you mean \'Split\'?')


def test_built_in_calculators_come_from_the_entry_point_group() -> None:
    registry = Registry.from_entry_points()
    assert "ImageGenCalculator" in registry.names()


def test_plugins_are_discovered_and_imported_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, "shout-plugin", {"Shout": "shout_mod:Shout", "Broken": "broken_mod:Nope"},
                 {"shout_mod": PLUGIN, "broken_mod": "raise ImportError('missing dependency foo')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry.from_entry_points()
    assert {"Shout", "Broken", "ImageGenCalculator"} <= set(registry.names())
    assert registry.get("Shout").__name__ == "Shout"
    with pytest.raises(RegistryError) as info:
        registry.get("Broken")
    assert str(info.value) == ('calculator "Broken" could not be imported from broken_mod:Nope '
                               "(from shout-plugin): ImportError: missing dependency foo")


def test_two_distributions_claiming_one_name_fail_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path / "a", "plugin-a", {"Shout": "shout_a:Shout"}, {"shout_a": PLUGIN})
    write_plugin(tmp_path / "b", "plugin-b", {"Shout": "shout_b:Shout"}, {"shout_b": PLUGIN})
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    registry = Registry.from_entry_points()
    with pytest.raises(RegistryError) as info:
        registry.get("Shout")
    message = str(info.value)
    assert message.startswith('calculator "Shout" is registered twice: by shout_')
    assert "(from plugin-a)" in message and "(from plugin-b)" in message
