"""Where the course lives on disk: one answer for every module that needs the course folder."""

from __future__ import annotations

from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]  # helpers/paths.py -> the folder holding helpers/


def course_root() -> Path:
    """The course folder: the one holding helpers/, with notebooks/, solutions/ and pyproject.toml
    beside it in a clone (an installed, non-editable copy has only helpers/ there)."""
    return _ROOT
