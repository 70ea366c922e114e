"""What OpenVINO GenAI's exceptions say, without the source locations they lead with."""

from __future__ import annotations


def genai_reason(exc: BaseException) -> str:
    """The human part of an OpenVINO exception, without the "Exception from <source path>:" and
    "Check '...' failed at <source path>:" lines that lead it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    meaningful = [line for line in lines
                  if not (line.startswith(("Exception from ", "Check '")) and line.endswith(":"))]
    return (meaningful or lines or [type(exc).__name__])[-1]
