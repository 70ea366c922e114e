"""Write a throwaway installed distribution (dist-info + module) so entry-point discovery is real."""

from __future__ import annotations

from pathlib import Path


def write_plugin(root: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> Path:
    """Create ``root/<dist>-0.1.dist-info`` registering ``entries`` in ovms_graph.calculators."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[ovms_graph.calculators]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)
    return root
