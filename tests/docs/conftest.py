"""Shared pieces of the documentation tests: where the repository and the tiny models are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
TINY = REPO / "models" / "tiny"
