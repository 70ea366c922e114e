"""run_serve's exits before anything listens: pull failures and unusable settings."""

from __future__ import annotations

from pathlib import Path

import pytest

import calculators.image_gen.pull
from calculators.image_gen.cli import PullOptions, pulled_graphs
from calculators.image_gen.pull import FetchError, PullError, UsageError
from ovms_graph.serve import run_serve
from ovms_graph.settings import ServerOptions


@pytest.mark.parametrize(("error", "status"), [
    (UsageError("--source_loras: entry 1: expected alias=source"), 2),
    (FetchError("OpenVINO/nope: download failed: HTTP 404 Not Found"), 1),
])
def test_pull_failures_exit_with_the_pull_status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path, error: PullError, status: int) -> None:
    def fail(options: PullOptions) -> None:
        raise error

    monkeypatch.setattr(calculators.image_gen.pull, "pull_model", fail)
    options = PullOptions(source_model="OpenVINO/nope", model_repository_path=tmp_path)
    assert run_serve(None, ServerOptions(), pulled_graphs(options)) == status
    assert capsys.readouterr().err == f"ovms-graph serve: error: {error.message}\n"


def test_unusable_api_key_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "graph.pbtxt").write_text("")
    config = tmp_path / "config.json"
    config.write_text('{"model_config_list": [{"config": {"name": "g", "base_path": "g"}}]}')
    missing = tmp_path / "no-key"
    assert run_serve(config, ServerOptions(api_key_file=missing)) == 2
    assert capsys.readouterr().err == (f"{missing}: --api_key_file: cannot read the API key file: "
                                       "No such file or directory\n")
