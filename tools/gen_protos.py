"""Generate the Python protobuf modules from proto/ with grpcio-tools.

The .proto sources keep MediaPipe's and OVMS's import paths (``mediapipe/framework/...``) so they
stay interchangeable; the generated modules live inside our packages, so their imports are
rewritten from ``mediapipe.framework`` to ``ovms_graph.protos``. ``--check`` regenerates into a
temporary folder and fails when the committed modules differ (run by the test suite).

Usage: python tools/gen_protos.py [--check]
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"

# (source relative to proto/, package folder the generated module belongs in)
TARGETS: list[tuple[str, str]] = [
    ("mediapipe/framework/calculator_options.proto", "ovms_graph/protos"),
    ("mediapipe/framework/mediapipe_options.proto", "ovms_graph/protos"),
    ("mediapipe/framework/packet_factory.proto", "ovms_graph/protos"),
    ("mediapipe/framework/packet_generator.proto", "ovms_graph/protos"),
    ("mediapipe/framework/status_handler.proto", "ovms_graph/protos"),
    ("mediapipe/framework/stream_handler.proto", "ovms_graph/protos"),
    ("mediapipe/framework/calculator.proto", "ovms_graph/protos"),
    ("calculators/image_gen_calculator.proto", "calculators/protos"),
]

_IMPORT_FIXES = [
    (re.compile(r"^from mediapipe\.framework import ", re.M), "from ovms_graph.protos import "),
    (re.compile(r"^import mediapipe\.framework\.(\w+)", re.M), r"import ovms_graph.protos.\1"),
    (re.compile(r"\bmediapipe\.framework\.(\w+_pb2)\b"), r"ovms_graph.protos.\1"),
]


def _generate(out_root: Path) -> dict[str, str]:
    """Return {relative output path: text} for every generated module and stub."""
    from grpc_tools import protoc

    include = str(resources.files("grpc_tools") / "_proto")
    raw = out_root / "raw"
    raw.mkdir(parents=True)
    sources = [src for src, _ in TARGETS]
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={raw}", f"--pyi_out={raw}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated: dict[str, str] = {}
    for src, package in TARGETS:
        stem = Path(src).with_suffix("").as_posix() + "_pb2"
        for suffix in (".py", ".pyi"):
            text = (raw / (stem + suffix)).read_text()
            for pattern, repl in _IMPORT_FIXES:
                text = pattern.sub(repl, text)
            generated[f"{package}/{Path(stem).name}{suffix}"] = text
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed modules are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(Path(tmp))
    stale = []
    for rel, text in sorted(generated.items()):
        path = ROOT / rel
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(rel)
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), rel, "regenerated", lineterm="")
            sys.stderr.write("\n".join(list(diff)[:40]) + "\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {rel}")
    for package in {p for _, p in TARGETS}:
        init = ROOT / package / "__init__.py"
        if not init.exists() and not args.check:
            init.write_text('"""Generated protobuf modules (tools/gen_protos.py); do not edit."""\n')
    if stale:
        sys.stderr.write("stale generated modules (run `make proto`): " + ", ".join(stale) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
