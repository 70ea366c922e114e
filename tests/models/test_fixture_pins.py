"""The ``fixtures`` extra pins the model-building packages at the versions the committed models record.

A fresh ``make fixtures`` resolves what pyproject.toml allows; when that differs from what
models/*/MANIFEST.json says built the files, the rebuild is no longer byte-identical.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
#: Packages whose version changes the exported bytes.
BUILDERS = ("torch", "diffusers", "transformers", "safetensors")


def fixture_pins() -> dict[str, str]:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["fixtures"]
    pins = {}
    for requirement in extra:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^,;\s]+)", requirement)
        if match:
            pins[match[1].lower()] = match[2]
    return pins


@pytest.mark.parametrize("manifest", ["models/tiny/MANIFEST.json", "models/demo/MANIFEST.json"])
def test_fixture_extra_pins_the_versions_the_manifest_records(manifest: str) -> None:
    recorded = json.loads((ROOT / manifest).read_text())["packages"]
    pins = fixture_pins()
    # torch's local build tag (+cpu) names the wheel variant, not a different version.
    expected = {name: recorded[name].split("+")[0] for name in BUILDERS}
    assert {name: pins.get(name) for name in BUILDERS} == expected
