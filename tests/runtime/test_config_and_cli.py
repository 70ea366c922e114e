"""config.json forms and `ovms-graph validate`: messages, summaries and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ovms_graph.cli import build_parser, main
from ovms_graph.config import load_config, write_model_entry
from ovms_graph.errors import ConfigError

GOOD = 'input_stream: "TEXT:in"\noutput_stream: "TEXT:out"\n'


def make_graph(folder: Path, name: str = "graph.pbtxt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(GOOD)
    return path


def write_config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_model_config_list_and_mediapipe_config_list(tmp_path: Path) -> None:
    make_graph(tmp_path / "sd")
    make_graph(tmp_path / "other", "custom.pbtxt")
    config = write_config(tmp_path, {
        "model_config_list": [{"config": {"name": "sd", "base_path": "sd"}}],
        "mediapipe_config_list": [{"name": "other", "base_path": "other", "graph_path": "custom.pbtxt"}],
    })
    entries = load_config(config)
    assert [(e.name, e.graph_path) for e in entries] == [
        ("sd", tmp_path / "sd" / "graph.pbtxt"), ("other", tmp_path / "other" / "custom.pbtxt")]


@pytest.mark.parametrize(("data", "message"), [
    ({"model_config_list": [{"config": {"name": "sd", "base_path": "sd", "target_device": "CPU"}}]},
     'model_config_list[0] "sd": unknown key "target_device" (allowed: base_path, graph_path, name)'),
    ({"model_config_list": [{"config": {"name": "sd", "base_path": "missing"}}]},
     'model_config_list[0] "sd": base_path "missing" is not a directory'),
    ({"model_config_list": [{"config": {"base_path": "sd"}}]},
     'model_config_list[0]: "name" must be a non-empty string'),
    ({"model_config_list": [{"name": "sd", "base_path": "sd"}]},
     'model_config_list[0]: expected {"config": {...}}'),
    ({"model_config_list": [{"config": {"name": "sd", "base_path": "sd", "graph_path": "nope.pbtxt"}}]},
     'model_config_list[0] "sd": graph file'),
    ({"model_config_list": [{"config": {"name": "sd", "base_path": "sd"}}, {"config": {"name": "sd",
                                                                                       "base_path": "sd"}}]},
     'model_config_list[1] "sd": name "sd" is already used by model_config_list[0] "sd"'),
    ({"models": []}, 'unknown key "models" (allowed: model_config_list, mediapipe_config_list)'),
    ({"model_config_list": []}, "no graphs configured (model_config_list is empty)"),
])
def test_config_errors_name_the_entry(tmp_path: Path, data: object, message: str) -> None:
    make_graph(tmp_path / "sd")
    config = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert message in str(info.value)
    assert str(info.value).startswith(str(config))


def test_malformed_json_is_reported_with_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text("{nope")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value).startswith(f"{config}: not valid JSON: Expecting property name")


def test_write_model_entry_creates_and_replaces(tmp_path: Path) -> None:
    config = tmp_path / "models" / "config.json"
    write_model_entry(config, "a", "A")
    write_model_entry(config, "b", "B")
    write_model_entry(config, "a", "A2")
    assert json.loads(config.read_text()) == {"model_config_list": [
        {"config": {"name": "b", "base_path": "B"}}, {"config": {"name": "a", "base_path": "A2"}}]}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ovms_graph.cli", *args], capture_output=True, text=True,
                          check=False, timeout=60)


def test_validate_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    graph = tmp_path / "bad" / "graph.pbtxt"
    graph.parent.mkdir()
    graph.write_text('max_queue_size: 3\nnode { calculator: "ImageGenCalculatr" }\n')
    result = run_cli("validate", str(graph))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (f'{graph}:1: max_queue_size: graph field "max_queue_size" is part of MediaPipe\'s schema '
                        "but ovms-graph does not act on it; remove it")
    assert lines[1].startswith(f'{graph}:2: node "#0" (ImageGenCalculatr): calculator: unknown calculator '
                               "\"ImageGenCalculatr\"; did you mean 'ImageGenCalculator'")
    assert lines[-1] == "validation failed"


def test_validate_reports_config_errors_with_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"model_config_list": [{"config": {"name": "x", "base_path": "nowhere"}}]})
    result = run_cli("validate", "--config_path", str(config))
    assert result.returncode == 2
    assert 'model_config_list[0] "x": base_path "nowhere" is not a directory' in result.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--rest_port", "abc"], "argument --rest_port: --rest_port expects a port number, got 'abc'"),
    (["serve", "--max_queued_requests", "-1"],
     "argument --max_queued_requests: --max_queued_requests expects a non-negative integer, got '-1'"),
    (["serve", "--target_device", "CPU GPU"],
     "argument --target_device: --target_device expects CPU, GPU, NPU or three of them (\"CPU GPU NPU\"), "
     "got 'CPU GPU'"),
    (["serve", "--bogus"], "unrecognized arguments: --bogus"),
    (["serve"], "serve needs --config_path or --source_model"),
    (["serve", "--source_model", "a/b"], "--source_model needs --model_repository_path"),
    (["pull", "--source_model", "a/b"], "the following arguments are required: --model_repository_path"),
    (["validate"], "validate needs a graph.pbtxt or config.json path"),
])
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_ovms_command_lines_parse_after_replacing_ovms() -> None:
    argv = ("serve --rest_port 8000 --model_repository_path /models/ --task image_generation "
            "--source_model stabilityai/stable-diffusion-xl-base-1.0 --source_loras xray=a/b --weight-format int4")
    ns = build_parser().parse_args(argv.split(" "))
    assert (ns.rest_port, ns.task, ns.source_model, ns.weight_format) == (
        8000, "image_generation", "stabilityai/stable-diffusion-xl-base-1.0", "int4")
