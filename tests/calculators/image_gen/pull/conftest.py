"""Fixtures for pull tests: a fake Hugging Face Hub and a file server on 127.0.0.1, an isolated HF env."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# huggingface_hub reads these when it is imported; telemetry would otherwise look up an agent
# registry on the default endpoint, off this machine.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from calculators.image_gen.cli import PullOptions
from tests.calculators.image_gen.pull.fake_hub import FakeHub, FileServer, files_from_dir

REPO_ROOT = Path(__file__).resolve().parents[4]
# The project's tiny models (tools/build_tiny_models.py, `make fixtures`).
TINY = Path(os.environ.get("OVMS_GRAPH_TINY_MODELS", REPO_ROOT / "models" / "tiny"))

SD15_REPO = "OpenVINO/tiny-sd15-ov"
LORA_REPO = "tiny/lora-a"  # one .safetensors
LORAS_REPO = "tiny/loras"  # several, one of them with a space in its name


def tiny(name: str) -> Path:
    """A tiny model folder; fails (never skips) with how to build it when it is missing."""
    path = TINY / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the tiny models with `make fixtures` (tools/build_tiny_models.py)")
    return path


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME in the test's folder, no token, no telemetry; returns HF_HOME."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return home


@pytest.fixture
def hub(hf_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A started fake Hub serving the tiny SD1.5 model and LoRA repositories; HF_ENDPOINT points at it."""
    fake = FakeHub()
    fake.add_repo(SD15_REPO, files_from_dir(tiny("sd15"), exclude=("graph.pbtxt",)))
    loras = tiny("loras")
    fake.add_repo(LORA_REPO, {"README.md": b"# lora a\n",
                              "lora_a.safetensors": (loras / "lora_a.safetensors").read_bytes()})
    fake.add_repo(LORAS_REPO, {
        "README.md": b"# loras\n",
        "lora_b.safetensors": (loras / "lora_b.safetensors").read_bytes(),
        "styles/Outline Style.safetensors": (loras / "lora_c.safetensors").read_bytes(),
    })
    fake.add_repo("tiny/not-a-pipeline", {"config.json": b'{"model_type": "bert"}\n', "README.md": b"# bert\n"})
    fake.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    fake.stop()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer(files={"lora_c.safetensors": (tiny("loras") / "lora_c.safetensors").read_bytes(),
                               "notes.txt": b"not a LoRA\n"}).start()
    yield server
    server.stop()


def pull_options(repo: Path, source_model: str = SD15_REPO, **kwargs: object) -> PullOptions:
    return PullOptions(source_model=source_model, model_repository_path=repo, **kwargs)  # type: ignore[arg-type]
