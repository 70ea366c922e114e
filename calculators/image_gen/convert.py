"""Converting a diffusers repository to OpenVINO IR with optimum-intel (the ``[convert]`` extra).

Guarantees: a conversion that cannot run, fails, or produces no ``openvino_model.xml`` raises
:class:`FetchError` (exit status 1) naming ``--source_model``, and leaves no output folder behind.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

from calculators.image_gen.fetch import FetchError, remove_path

# Conversion is a stage of a pull and logs as one.
log = logging.getLogger("calculators.image_gen.pull")

INSTALL_CONVERT = "pip install 'ovms-graph[convert]'"


def is_openvino_ir(files: list[str]) -> bool:
    """Whether the repository ``files`` (relative paths) hold an OpenVINO IR model."""
    return any(f == "openvino_model.xml" or f.endswith("/openvino_model.xml") for f in files)


def optimum_available() -> bool:
    """Whether optimum-intel's OpenVINO exporter can be imported (the ``[convert]`` extra)."""
    try:
        return (importlib.util.find_spec("optimum.intel") is not None
                and importlib.util.find_spec("optimum.exporters.openvino") is not None)
    except (ImportError, ValueError):
        return False


def check_convertible(source: str) -> None:
    """A repository not in OpenVINO IR layout can be converted only with optimum-intel installed."""
    if not optimum_available():
        raise FetchError(f"--source_model {source}: the repository is not in OpenVINO IR format and converting "
                         f"it needs optimum-intel, which is not installed. Install it with: {INSTALL_CONVERT} "
                         "(or pull a model that is already converted, e.g. from the OpenVINO organization)")


def export_task(pipeline: str) -> str:
    """optimum's export task for a diffusers pipeline class (it cannot infer one for a local folder)."""
    if "Inpaint" in pipeline or pipeline == "FluxFillPipeline":
        return "inpainting"
    if "Img2Img" in pipeline:
        return "image-to-image"
    return "text-to-image"


def convert_model(source_dir: Path, output_dir: Path, weight_format: str, *, source: str, pipeline: str) -> None:
    """Export the diffusers pipeline folder ``source_dir`` (class ``pipeline``) to OpenVINO IR in
    ``output_dir`` with optimum-intel; FetchError (and no ``output_dir``) on failure."""
    what = f"--source_model {source}"
    if not optimum_available():
        raise FetchError(f"{what}: converting to OpenVINO IR needs optimum-intel, which is not installed. "
                         f"Install it with: {INSTALL_CONVERT}")
    command = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino",
               "--model", str(source_dir), "--task", export_task(pipeline), "--weight-format", weight_format,
               str(output_dir)]
    print(f"Converting {source} to OpenVINO IR ({weight_format}) with optimum-intel", flush=True)
    log.debug("running %s", " ".join(command))
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode != 0 or not (output_dir / "model_index.json").is_file():
        remove_path(output_dir)
        tail = "\n".join(result.stdout.strip().splitlines()[-15:])
        raise FetchError(f"{what}: conversion with optimum-intel failed (exit status {result.returncode}):\n{tail}")
    if not is_openvino_ir([p.relative_to(output_dir).as_posix() for p in output_dir.rglob("openvino_model.xml")]):
        remove_path(output_dir)
        raise FetchError(f"{what}: conversion with optimum-intel produced no openvino_model.xml")

