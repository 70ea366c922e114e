"""Pulling through the fake Hub: layout, graph.pbtxt, config.json, LoRA sources, re-pulls, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from calculators.image_gen.convert import export_task
from calculators.image_gen.pull import (
    IMAGE_GENERATION_PIPELINES,
    FetchError,
    PullError,
    UsageError,
    pull_model,
    run_pull,
)
from ovms_graph.graph import load_spec
from ovms_graph.registry import Registry
from ovms_graph.validation import validate_graph
from tests.calculators.image_gen.pull.conftest import LORA_REPO, LORAS_REPO, SD15_REPO, pull_options, tiny
from tests.calculators.image_gen.pull.fake_hub import FakeHub, FileServer, files_from_dir

REPO_ROOT = Path(__file__).resolve().parents[4]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def model_files(hub: FakeHub, repo: str = SD15_REPO) -> dict[str, bytes]:
    return hub.repos[repo].files


def graph_node_options(graph: Path) -> list[str]:
    """The option lines of the written node, comments and blank lines left out."""
    lines = graph.read_text().splitlines()
    start = lines.index("      [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {") + 1
    return [line.strip() for line in lines[start:lines.index("      }")]
            if line.strip() and not line.strip().startswith("#")]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ovms_graph.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO_ROOT, timeout=240, check=False)


# ----- the model ---------------------------------------------------------------------------------

def test_pull_downloads_the_model_writes_graph_and_config(hub: FakeHub, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    config = tmp_path / "config.json"
    entry = pull_model(pull_options(repo, config_path=config, default_num_inference_steps=2, num_streams=2))

    model_dir = repo / "OpenVINO" / "tiny-sd15-ov"
    assert entry.name == SD15_REPO
    assert entry.graph_path == model_dir / "graph.pbtxt"
    files = tree(model_dir)
    assert files.pop("graph.pbtxt")
    assert files == model_files(hub)  # byte for byte, nothing else (no .cache, no markers)
    assert sorted(p.name for p in (repo / "OpenVINO").iterdir()) == ["tiny-sd15-ov"]  # no staging left
    assert graph_node_options(entry.graph_path) == [
        'models_path: "./"', "plugin_config: '{\"NUM_STREAMS\": 2}'", "default_num_inference_steps: 2"]
    assert entry.graph_path.read_text().startswith(
        "# Image generation graph for OpenVINO/tiny-sd15-ov, written by ovms-graph pull.\n")
    assert json.loads(config.read_text()) == {
        "model_config_list": [{"config": {"name": SD15_REPO, "base_path": "models/OpenVINO/tiny-sd15-ov"}}]}
    # model info first; then every file at the commit it named (huggingface_hub 1.x and 2.x list files differently)
    sha = hub.repos[SD15_REPO].sha
    assert hub.calls("/api/")[0] == f"GET /api/models/{SD15_REPO}"
    resolves = [c for c in hub.calls() if "/resolve/" in c]
    pinned = (f"HEAD /{SD15_REPO}/resolve/{sha}/", f"GET /{SD15_REPO}/resolve/{sha}/")
    assert all(c.startswith(pinned) for c in resolves)
    assert {c.split(f"/{sha}/", 1)[1] for c in resolves if c.startswith("HEAD")} == set(model_files(hub))


def test_model_name_sets_the_served_name_only(hub: FakeHub, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "other", "base_path": "other"}}]}))
    entry = pull_model(pull_options(tmp_path / "models", model_name="sd", config_path=config))
    assert entry.name == "sd"
    assert entry.graph_path == tmp_path / "models" / "OpenVINO" / "tiny-sd15-ov" / "graph.pbtxt"
    assert "# Served as: sd\n" in entry.graph_path.read_text()
    pull_model(pull_options(tmp_path / "models", model_name="sd", config_path=config))  # no duplicate entry
    assert json.loads(config.read_text())["model_config_list"] == [
        {"config": {"name": "other", "base_path": "other"}},
        {"config": {"name": "sd", "base_path": "models/OpenVINO/tiny-sd15-ov"}}]


def test_a_present_model_is_not_downloaded_again(hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                 ) -> None:
    repo = tmp_path / "models"
    entry = pull_model(pull_options(repo, resolution="64x64"))
    before = len(hub.requests)
    graph_mtime = entry.graph_path.stat().st_mtime_ns
    capsys.readouterr()

    again = pull_model(pull_options(repo, resolution="64x64"))
    assert len(hub.requests) == before  # not even contacted
    assert again == entry
    assert entry.graph_path.stat().st_mtime_ns == graph_mtime  # same flags, same file, untouched
    out = capsys.readouterr().out
    assert f"Path already exists on local filesystem. Skipping download to path: {entry.graph_path.parent}" in out

    pull_model(pull_options(repo, resolution="64x64 128x128", default_resolution="128x128"))  # new flags
    assert len(hub.requests) == before
    assert graph_node_options(entry.graph_path) == [
        'models_path: "./"', 'resolution: "64x64 128x128"', 'default_resolution: "128x128"']


def test_overwrite_models_downloads_again(hub: FakeHub, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    entry = pull_model(pull_options(repo))
    unet = entry.graph_path.parent / "unet" / "openvino_model.bin"
    unet.write_bytes(b"corrupted")
    (entry.graph_path.parent / "stray.txt").write_text("left by hand")
    before = len(hub.requests)
    pull_model(pull_options(repo, overwrite_models=True))
    assert len(hub.requests) > before
    files = tree(entry.graph_path.parent)
    files.pop("graph.pbtxt")
    assert files == model_files(hub)


def test_an_interrupted_download_leaves_no_model_and_the_next_pull_finishes_it(hub: FakeHub, tmp_path: Path) -> None:
    """A pull killed mid-file leaves only the hidden staging folder; the next pull completes the model."""
    repo = tmp_path / "models"
    big = "unet/openvino_model.bin"
    hub.stall_after[big] = len(model_files(hub)[big]) // 2
    proc = subprocess.Popen([sys.executable, "-m", "ovms_graph.cli", "pull", "--source_model", SD15_REPO,
                             "--model_repository_path", str(repo)], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hub.stalled.wait(120), "the download never reached the stalled file"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    model_dir = repo / "OpenVINO" / "tiny-sd15-ov"
    assert not model_dir.exists()
    assert (repo / "OpenVINO" / ".tiny-sd15-ov.download").is_dir()
    hub.release()

    assert run_pull(pull_options(repo)) == 0
    files = tree(model_dir)
    files.pop("graph.pbtxt")
    assert files == model_files(hub)
    assert sorted(p.name for p in (repo / "OpenVINO").iterdir()) == ["tiny-sd15-ov"]


def test_a_failed_download_leaves_no_model(hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "models"
    hub.fail["scheduler/scheduler_config.json"] = 403
    assert run_pull(pull_options(repo)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ovms-graph pull: error: --source_model {SD15_REPO}: ")
    assert "403" in err and "Traceback" not in err
    assert not (repo / "OpenVINO" / "tiny-sd15-ov").exists()
    hub.fail.clear()
    assert run_pull(pull_options(repo)) == 0


def test_a_repository_that_is_not_an_image_generation_model_is_a_download_failure(
        hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SPEC §9: what depends on what the Hub holds exits 1, like other download failures."""
    hub.add_repo("tiny/video", {"model_index.json": b'{"_class_name": "LTXPipeline"}', "README.md": b"video"})
    repo = tmp_path / "models"
    assert run_pull(pull_options(repo, source_model="tiny/not-a-pipeline")) == 1
    assert capsys.readouterr().err == (
        "ovms-graph pull: error: --source_model tiny/not-a-pipeline: not an image generation model: the repository "
        "has no model_index.json (--task image_generation needs a diffusers pipeline, e.g. "
        "OpenVINO/stable-diffusion-v1-5-int8-ov)\n")
    assert run_pull(pull_options(repo, source_model="tiny/video", task="image_generation")) == 1
    err = capsys.readouterr().err
    assert err == ("ovms-graph pull: error: --source_model tiny/video: not an image generation model: "
                   "model_index.json names pipeline 'LTXPipeline', which OpenVINO GenAI does not serve for "
                   f"image generation (supported: {', '.join(sorted(IMAGE_GENERATION_PIPELINES))})\n")
    assert not (repo / "tiny" / "video").exists() and not (repo / "tiny" / "not-a-pipeline").exists()
    assert [c.split("/")[-1] for c in hub.calls() if "/resolve/" in c] == ["model_index.json"] * 2


def test_a_present_folder_that_is_no_pipeline_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models" / "org" / "llm").mkdir(parents=True)
    (tmp_path / "models" / "org" / "llm" / "config.json").write_text("{}")
    assert run_pull(pull_options(tmp_path / "models", source_model="org/llm")) == 1
    assert "--source_model org/llm: not an image generation model: the repository has no model_index.json" in \
        capsys.readouterr().err


def test_an_unknown_repository_is_a_download_failure(hub: FakeHub, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run_pull(pull_options(tmp_path, source_model="nobody/nothing")) == 1
    assert capsys.readouterr().err == (
        f"ovms-graph pull: error: --source_model nobody/nothing: repository not found on {hub.url} "
        "(a private or gated repository needs HF_TOKEN)\n")


def test_hf_token_is_sent_for_private_repositories(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    hub.add_repo("secret/sd15", model_files(hub), private=True)
    assert run_pull(pull_options(tmp_path, source_model="secret/sd15")) == 1
    assert "repository not found on" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", hub.token)
    first = len(hub.requests)
    entry = pull_model(pull_options(tmp_path, source_model="secret/sd15"))
    assert (entry.graph_path.parent / "unet" / "openvino_model.bin").is_file()
    api_calls = [r for r in hub.requests[first:] if r.path.startswith(("/secret/", "/api/models/secret/"))]
    assert api_calls and all(r.headers.get("Authorization") == f"Bearer {hub.token}" for r in api_calls)


def test_a_diffusers_repository_needs_the_convert_extra(hub: FakeHub, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    hub.add_repo("tiny/sd15-diffusers", {
        "model_index.json": (tiny("sd15") / "model_index.json").read_bytes(),
        "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": b"\0" * 64})
    # optimum-intel is the [convert] extra; make sure it is absent whatever is installed
    monkeypatch.setitem(sys.modules, "optimum", None)
    assert run_pull(pull_options(tmp_path, source_model="tiny/sd15-diffusers")) == 1
    assert capsys.readouterr().err == (
        "ovms-graph pull: error: --source_model tiny/sd15-diffusers: the repository is not in OpenVINO IR format and "
        "converting it needs optimum-intel, which is not installed. Install it with: pip install 'ovms-graph[convert]' "
        "(or pull a model that is already converted, e.g. from the OpenVINO organization)\n")
    sha = hub.repos["tiny/sd15-diffusers"].sha
    assert [c for c in hub.calls() if "/resolve/" in c or "/cdn/" in c] == [  # refused before the weights
        f"HEAD /tiny/sd15-diffusers/resolve/{sha}/model_index.json",
        f"GET /tiny/sd15-diffusers/resolve/{sha}/model_index.json"]
    assert not (tmp_path / "tiny" / "sd15-diffusers").exists()


# ----- LoRA adapters -----------------------------------------------------------------------------

def test_lora_sources_are_fetched_into_the_model_folder(hub: FakeHub, file_server: FileServer, tmp_path: Path
                                                        ) -> None:
    local = tmp_path / "my loras" / "local.safetensors"
    local.parent.mkdir()
    local.write_bytes((tiny("loras") / "lora_b.safetensors").read_bytes())
    spec = (f"a=tiny/lora-a:0.5,styled={LORAS_REPO}@styles/Outline Style.safetensors,"
            f"url={file_server.url}/files/lora_c.safetensors,moved={file_server.url}/moved/lora_c.safetensors:0.25,"
            f"mine={local},mix=@a+@styled:0.3")
    entry = pull_model(pull_options(tmp_path / "models", source_loras=spec))
    model_dir = entry.graph_path.parent
    loras = tiny("loras")
    assert (model_dir / "loras/a/lora_a.safetensors").read_bytes() == (loras / "lora_a.safetensors").read_bytes()
    assert (model_dir / "loras/styled/styles/Outline Style.safetensors").read_bytes() == \
        (loras / "lora_c.safetensors").read_bytes()
    assert (model_dir / "loras/url/lora_c.safetensors").read_bytes() == (loras / "lora_c.safetensors").read_bytes()
    assert (model_dir / "loras/moved/lora_c.safetensors").is_file()
    assert sorted(p.name for p in (model_dir / "loras").iterdir()) == ["a", "moved", "styled", "url"]
    assert sorted(p.name for p in (model_dir / "loras" / "a").iterdir()) == [".ovms_graph_source.json",
                                                                            "lora_a.safetensors"]
    assert graph_node_options(entry.graph_path) == [
        'models_path: "./"',
        'lora_adapters { alias: "a" path: "loras/a/lora_a.safetensors" alpha: 0.5 mode: DYNAMIC }',
        'lora_adapters { alias: "styled" path: "loras/styled/styles/Outline Style.safetensors" mode: DYNAMIC }',
        'lora_adapters { alias: "url" path: "loras/url/lora_c.safetensors" mode: DYNAMIC }',
        'lora_adapters { alias: "moved" path: "loras/moved/lora_c.safetensors" alpha: 0.25 mode: DYNAMIC }',
        f'lora_adapters {{ alias: "mine" path: "{local}" mode: DYNAMIC }}',
        'composite_lora_adapters { alias: "mix" components { adapter_alias: "a" } '
        'components { adapter_alias: "styled" alpha: 0.3 } }']

    # a second pull fetches nothing; a changed source for an alias is fetched again
    before, served = len(hub.requests), len(file_server.requests)
    pull_model(pull_options(tmp_path / "models", source_loras=spec))
    assert (len(hub.requests), len(file_server.requests)) == (before, served)
    pull_model(pull_options(tmp_path / "models", source_loras=f"a={LORAS_REPO}@lora_b.safetensors"))
    assert (model_dir / "loras/a/lora_b.safetensors").read_bytes() == (loras / "lora_b.safetensors").read_bytes()
    assert not (model_dir / "loras/a/lora_a.safetensors").exists()
    assert len(hub.requests) > before


def test_npu_adapters_are_static(hub: FakeHub, tmp_path: Path) -> None:
    entry = pull_model(pull_options(tmp_path, target_device="NPU", resolution="64x64",
                                    source_loras=f"a={LORA_REPO},b={LORAS_REPO}@lora_b.safetensors,ab=@a:0.6+@b:0.4"))
    assert graph_node_options(entry.graph_path) == [
        'models_path: "./"', 'device: "NPU"', 'resolution: "64x64"',
        'lora_adapters { alias: "a" path: "loras/a/lora_a.safetensors" mode: STATIC }',
        'lora_adapters { alias: "b" path: "loras/b/lora_b.safetensors" mode: STATIC }',
        'composite_lora_adapters { alias: "ab" components { adapter_alias: "a" alpha: 0.6 } '
        'components { adapter_alias: "b" alpha: 0.4 } }']


# (--source_loras, exit status, message after "ovms-graph pull: error: "); {files} is the file server.
# SPEC §9: grammar errors exit 2 naming the flag; what depends on what the Hub holds exits 1.
LORA_FAILURES = [
    (f"b={LORAS_REPO}", 1,
     f"--source_loras entry 'b={LORAS_REPO}': repository {LORAS_REPO} has several .safetensors files: "
     f"lora_b.safetensors, styles/Outline Style.safetensors. Name one: b={LORAS_REPO}@<file>"),
    (f"b={LORAS_REPO}@nope.safetensors", 1,
     f"--source_loras entry 'b={LORAS_REPO}@nope.safetensors': repository {LORAS_REPO} has no file "
     "'nope.safetensors' (.safetensors files: lora_b.safetensors, styles/Outline Style.safetensors)"),
    ("b=tiny/not-a-pipeline", 1,
     "--source_loras entry 'b=tiny/not-a-pipeline': repository tiny/not-a-pipeline has no .safetensors file"),
    ("b=nobody/nothing", 1,
     "--source_loras entry 'b=nobody/nothing': repository not found on {hub} (a private or gated repository needs "
     "HF_TOKEN)"),
    ("a=tiny/lora-a:0.8,mix=@a:0.5", 2,
     "LoRA adapter 'a' has alpha 0.8 in --source_loras entry 'a=tiny/lora-a:0.8' and composite 'mix' gives it alpha "
     "0.5. Alpha must be specified at only one level: either on the individual adapter or on the composite "
     "components, not both."),
    ("..=tiny/lora-a", 2,
     "Invalid LoRA alias '..' in --source_loras entry: '..=tiny/lora-a'. Alias may not be '.' or '..': adapters are "
     "fetched into loras/<alias>/"),
]


@pytest.mark.parametrize(("spec", "status", "message"), LORA_FAILURES, ids=range(len(LORA_FAILURES)))
def test_lora_failures_are_reported_before_the_model_is_downloaded(
        spec: str, status: int, message: str, hub: FakeHub, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_pull(pull_options(tmp_path, source_loras=spec)) == status
    assert capsys.readouterr().err == f"ovms-graph pull: error: {message.replace('{hub}', hub.url)}\n"
    assert not [c for c in hub.calls() if "/resolve/" in c or "/cdn/" in c]
    assert not (tmp_path / "OpenVINO").exists()


def test_an_alias_may_not_be_the_served_name(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        pull_model(pull_options(tmp_path, model_name="sd", source_loras="sd=tiny/lora-a"))
    assert str(info.value) == ("--source_loras: alias 'sd' is the served model name; LoRA aliases must differ from "
                               "it (or set --model_name)")
    assert hub.requests == []


def test_a_url_on_the_hub_gets_hf_token_and_the_cdn_does_not(hub: FakeHub, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("secret/loras", {"lora_a.safetensors": (tiny("loras") / "lora_a.safetensors").read_bytes()},
                 private=True)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    url = f"{hub.url}/secret/loras/resolve/main/lora_a.safetensors"
    entry = pull_model(pull_options(tmp_path, source_loras=f"s={url}"))
    assert (entry.graph_path.parent / "loras/s/lora_a.safetensors").read_bytes() == \
        (tiny("loras") / "lora_a.safetensors").read_bytes()
    (resolve,) = [r for r in hub.requests if r.path == "/secret/loras/resolve/main/lora_a.safetensors"]
    assert resolve.headers["Authorization"] == f"Bearer {hub.token}"
    (cdn,) = [r for r in hub.requests if r.path.startswith("/cdn/") and "lora_a" in r.path]
    assert "Authorization" not in cdn.headers


def test_a_url_that_fails_is_a_download_failure(hub: FakeHub, file_server: FileServer, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{file_server.url}/files/missing.safetensors"
    assert run_pull(pull_options(tmp_path, source_loras=f"u={url}")) == 1
    assert capsys.readouterr().err == (
        f"ovms-graph pull: error: --source_loras entry 'u={url}': download failed: HTTP 404 Not Found\n")
    model_dir = tmp_path / "OpenVINO" / "tiny-sd15-ov"
    assert not (model_dir / "loras" / "u").exists()


# ----- the command line --------------------------------------------------------------------------

def test_cli_exit_statuses(hub: FakeHub, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    base = ["pull", "--source_model", SD15_REPO, "--model_repository_path", str(tmp_path / "models")]

    bad_flag = run_cli(*base, "--resolution", "64x64", "--max_resolution", "128x128", env=env)
    assert (bad_flag.returncode, bad_flag.stderr) == (2, (
        "ovms-graph pull: error: --max_resolution: cannot be used with a single static --resolution (the models are "
        "reshaped to 64x64)\n"))
    argparse_error = run_cli(*base, "--target_device", "TPU", env=env)
    assert argparse_error.returncode == 2 and "--target_device" in argparse_error.stderr
    missing = run_cli("pull", "--source_model", "nobody/nothing", "--model_repository_path", str(tmp_path), env=env)
    assert missing.returncode == 1 and "repository not found" in missing.stderr
    grammar = run_cli(*base, "--source_loras", "mix=@a:x", env=env)
    assert (grammar.returncode, grammar.stderr) == (2, (
        "ovms-graph pull: error: Invalid alpha 'x' in composite LoRA component '@a:x' in --source_loras entry: "
        "'mix=@a:x'\n"))
    assert hub.calls("/api/models/OpenVINO") == []  # flag errors never reach the hub
    not_in_repo = run_cli(*base, "--source_loras", f"b={LORAS_REPO}@nope.safetensors", env=env)
    assert not_in_repo.returncode == 1 and "has no file 'nope.safetensors'" in not_in_repo.stderr

    ok = run_cli(*base, "--source_loras", f"a={LORA_REPO}", "--default_num_inference_steps", "2",
                 "--config_path", str(tmp_path / "config.json"), env=env)
    assert ok.returncode == 0, ok.stderr
    graph = tmp_path / "models" / "OpenVINO" / "tiny-sd15-ov" / "graph.pbtxt"
    assert f'{graph}: graph "{SD15_REPO}" is valid' in ok.stdout
    assert "%|" not in ok.stderr  # no progress bars without a terminal
    assert "HTTP Request:" not in ok.stderr  # nor a log line per request

    validate = run_cli("validate", "--config_path", str(tmp_path / "config.json"), env=env)
    assert validate.returncode == 0, validate.stderr


def test_progress_bars_show_on_a_terminal(hub: FakeHub, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # tqdm needs a width
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ovms_graph.cli", "pull", "--source_model", SD15_REPO,
                             "--model_repository_path", str(tmp_path / "models")], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(240) == 0
    os.close(primary)
    assert b"Fetching " in output and b"100%|" in output


def test_pull_errors_are_config_errors_with_exit_statuses() -> None:
    assert issubclass(PullError, Exception)
    assert (UsageError("x").exit_code, FetchError("x").exit_code) == (2, 1)
    assert str(UsageError("--flag: bad")) == "--flag: bad"


def test_files_from_dir_sees_every_tiny_model_file() -> None:
    assert "unet/openvino_model.bin" in files_from_dir(tiny("sd15"))


# ----- families: the task comes from model_index.json ----------------------------------------------

@pytest.mark.parametrize(("pipeline", "task"), [
    ("StableDiffusion3Pipeline", "text-to-image"),
    ("StableDiffusion3Img2ImgPipeline", "image-to-image"),
    ("StableDiffusion3InpaintPipeline", "inpainting"),
    ("LatentConsistencyModelPipeline", "text-to-image"),
    ("LatentConsistencyModelImg2ImgPipeline", "image-to-image"),
])
def test_sd3_and_lcm_classes_are_image_generation_with_their_export_task(pipeline: str, task: str) -> None:
    assert pipeline in IMAGE_GENERATION_PIPELINES
    assert export_task(pipeline) == task


@pytest.mark.parametrize("model", ["sd3", "lcm"])
def test_pull_infers_image_generation_for_sd3_and_lcm(hub: FakeHub, tmp_path: Path, model: str) -> None:
    """No --task: model_index.json names StableDiffusion3Pipeline / LatentConsistencyModelPipeline, and
    the written graph validates against the downloaded model."""
    source = f"OpenVINO/tiny-{model}-ov"
    hub.add_repo(source, files_from_dir(tiny(model), exclude=("graph.pbtxt",)))
    entry = pull_model(pull_options(tmp_path / "models", source_model=source, default_num_inference_steps=2))
    model_dir = tmp_path / "models" / "OpenVINO" / f"tiny-{model}-ov"
    assert entry.graph_path == model_dir / "graph.pbtxt"
    assert json.loads((model_dir / "model_index.json").read_text())["_class_name"] == {
        "sd3": "StableDiffusion3Pipeline", "lcm": "LatentConsistencyModelPipeline"}[model]
    registry = Registry.from_entry_points()
    assert [str(p) for p in validate_graph(load_spec(entry.graph_path, registry), registry, graph_name=source)] == []
