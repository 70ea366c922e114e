"""Generate the options module of ovms-graph-prompt-guard from its .proto with grpcio-tools.

The generated ``prompt_guard_calculator_pb2.py`` (and its ``.pyi`` stub, for mypy) are committed next
to the .proto, so installing the package needs no compiler. ``--check`` regenerates into a temporary
folder and exits 1 when the committed files differ (the package's tests run it).

Usage: python gen_proto.py [--check]
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parent / "src"
#: Relative to src/, so the file registers in protobuf's pool under a name no other package uses.
PROTO = "ovms_graph_prompt_guard/prompt_guard_calculator.proto"
OUTPUTS = ("ovms_graph_prompt_guard/prompt_guard_calculator_pb2.py",
           "ovms_graph_prompt_guard/prompt_guard_calculator_pb2.pyi")


def generate(out: Path) -> dict[str, str]:
    """``{path relative to src/: text}`` of every generated file."""
    from grpc_tools import protoc

    if protoc.main(["protoc", f"-I{SRC}", f"--python_out={out}", f"--pyi_out={out}", str(SRC / PROTO)]) != 0:
        raise SystemExit(f"protoc failed on {SRC / PROTO}")
    return {rel: (out / rel).read_text() for rel in OUTPUTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed files are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
    stale = []
    for rel, text in generated.items():
        path = SRC / rel
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(rel)
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), rel, "regenerated", lineterm="")
            sys.stderr.write("\n".join(list(diff)[:40]) + "\n")
        else:
            path.write_text(text)
            print(f"wrote src/{rel}")
    if stale:
        sys.stderr.write(f"stale generated files (run python {Path(__file__).name}): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
