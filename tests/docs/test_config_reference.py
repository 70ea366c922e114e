"""Every error row of docs/config.md: the config.json it shows produces exactly the message it shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ovms_graph.config import load_config
from ovms_graph.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
ROW_RE = re.compile(r"^\| `(\{.*\})` \| `(.*)` \|$", re.MULTILINE)
ROWS = ROW_RE.findall(DOC.read_text(encoding="utf-8"))


def test_rows_are_found() -> None:
    assert len(ROWS) >= 10


@pytest.mark.parametrize(("config", "message"), ROWS)
def test_documented_config_error(config: str, message: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sd15").mkdir()
    (tmp_path / "sd15" / "graph.pbtxt").write_text('input_stream: "TEXT:in"\n', encoding="utf-8")
    (tmp_path / "config.json").write_text(config, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(Path("config.json"))
    assert str(info.value) == message


@pytest.mark.parametrize("block", re.findall(r"^```json\n(.*?)^```", DOC.read_text(encoding="utf-8"),
                                             re.MULTILINE | re.DOTALL))
def test_documented_examples_are_valid_json_with_a_graph_list(block: str) -> None:
    data = json.loads(block)
    assert {"model_config_list", "mediapipe_config_list"} & set(data)
