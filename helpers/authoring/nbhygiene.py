"""Notebook hygiene: what must never be committed in a course notebook, and a fixer for the rest.

Rules (``check_notebook``): no stored outputs except in cells marked ``# NBVAL_CHECK_OUTPUT``
(nbval compares those); no execution counts; kernelspec ``python3``; one code cell tagged
``parameters`` (papermill injects CI values there); no absolute paths of one machine
(``/home/``, ``/root/``, ``/Users/``, ``/work/``, ``/tmp/``, ``C:\\``); nothing that looks
like a secret (``sk-...`` keys, ``Bearer ...`` tokens, a key assigned as a string literal).
``python -m helpers.authoring.nbhygiene [--fix] [PATH ...]`` checks (or cleans) the course notebooks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import BadInput

COURSE_DIRS = ("notebooks", "solutions", "labs")
CHECK_OUTPUT_MARK = "# NBVAL_CHECK_OUTPUT"
CHECK_OUTPUT_TAG = "nbval-check-output"  # nbval's tag form of the same mark
PARAMETERS_TAG = "parameters"
KERNEL_NAME = "python3"

# An absolute path of one machine: not a URL segment (example.org/tmp/), not relative (~/, ./),
# not the container side of a Docker volume (-v ollama:/root/.ollama).
ABSOLUTE_PATH = re.compile(r"(?<![\w.~}\]):-])(?:/(?:home|root|Users|work|tmp)/|[A-Za-z]:\\)")
# Key-shaped strings (checked everywhere, outputs included) ...
SECRET_TOKENS = (
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),  # OpenAI / Anthropic style keys
    re.compile(r"\bBearer [A-Za-z0-9._~+/=-]{20,}"),  # a pasted Authorization header
)
# ... and a key written into code as a literal (os.environ["OPENAI_API_KEY"] = "...").
# Only code is checked for this one: markdown may show `export OPENAI_API_KEY="..."`.
KEY_LITERAL = re.compile(r"\b[A-Z][A-Z0-9_]*API_KEY[\"'\]]*\s*=\s*[\"']")

FIX_HINT = "clean it with `python -m helpers.authoring.nbhygiene --fix {path}`"


def _text(value: Any) -> str:
    """Notebook text fields are a string or a list of lines."""
    return "".join(value) if isinstance(value, list) else str(value or "")


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []) or [])


def keeps_output(cell: dict) -> bool:
    """True when nbval is meant to compare this cell's stored output."""
    return CHECK_OUTPUT_MARK in _text(cell.get("source")) or CHECK_OUTPUT_TAG in _tags(cell)


def cell_where(path: Path, index: int, cell: dict) -> str:
    """Name a cell for a learner: file, 1-based position, and id when it has one."""
    return f"{path} cell {index + 1}" + (f" (id {cell['id']})" if cell.get("id") else "")


def _output_text(output: dict) -> str:
    """The text an output shows (streams, text/* data, tracebacks), for the secret and path scans."""
    parts = [_text(output.get("text"))] + [_text(t) for t in output.get("traceback", [])]
    for mime, value in (output.get("data") or {}).items():
        if mime.endswith("json"):
            parts.append(json.dumps(value))
        elif mime.startswith("text/"):
            parts.append(_text(value))
    return "\n".join(parts)


def _redact(found: str) -> str:
    """Show enough of a secret to find it, never the secret itself."""
    return found[:6] + "..."


def _scan(where: str, text: str, what: str, code: bool) -> list[str]:
    """Absolute paths and secrets in one piece of text."""
    problems = []
    for match in ABSOLUTE_PATH.finditer(text):
        line = text[: match.start()].count("\n") + 1
        problems.append(
            f"{where}: absolute path {match.group(0)!r} in the {what} (line {line}); "
            f"use a path relative to the course folder or from get_settings()"
        )
    patterns = SECRET_TOKENS + ((KEY_LITERAL,) if code else ())
    for pattern in patterns:
        for match in pattern.finditer(text):
            problems.append(
                f"{where}: something that looks like a secret ({_redact(match.group(0))!r}) "
                f"in the {what}; remove it, revoke the key, and read keys from the "
                f"environment (.env) instead"
            )
    return problems


def _cell_problems(path: Path, index: int, cell: dict) -> list[str]:
    where = cell_where(path, index, cell)
    source = _text(cell.get("source"))
    is_code = cell.get("cell_type") == "code"
    problems = _scan(where, source, "source", code=is_code)
    if not is_code:
        return problems
    outputs = cell.get("outputs") or []
    checked = keeps_output(cell)
    if outputs and not checked:
        problems.append(
            f"{where}: {len(outputs)} stored output(s) in a cell without "
            f"'{CHECK_OUTPUT_MARK}'; {FIX_HINT.format(path=path)}"
        )
    counts = [cell.get("execution_count")] + [o.get("execution_count") for o in outputs]
    if checked and outputs:
        # nbval only compares a reference cell that was run: it needs an execution count
        if cell.get("execution_count") is None:
            problems.append(
                f"{where}: checked cell has outputs but no execution count (nbval: "
                f"'Unrun reference cell has outputs'); {FIX_HINT.format(path=path)}"
            )
    elif any(c is not None for c in counts):
        problems.append(f"{where}: execution count stored; {FIX_HINT.format(path=path)}")
    for output in outputs:
        problems += _scan(where, _output_text(output), "output", code=False)
    return problems


def check_notebook(path: Path) -> list[str]:
    """Every hygiene problem in the notebook at ``path``, one line each with its fix; [] if clean."""
    if not Path(path).is_file():
        raise BadInput(f"no notebook at {path}", "check the path (course notebooks: notebooks_in(root))")
    try:  # the raw JSON, so nothing is repaired before it is checked
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        return [f"{path}: not valid notebook JSON ({exc}); restore it from git or save it again"]
    if not isinstance(nb, dict):
        return [f"{path}: not a notebook (top level is not an object)"]
    problems = []
    kernel = (nb.get("metadata", {}).get("kernelspec") or {}).get("name")
    if kernel != KERNEL_NAME:
        problems.append(
            f"{path}: kernelspec name is {kernel!r}, not {KERNEL_NAME!r}; choose the "
            f"'Python 3 (ipykernel)' kernel and save"
        )
    cells = nb.get("cells", [])
    if not any(c.get("cell_type") == "code" and PARAMETERS_TAG in _tags(c) for c in cells):
        problems.append(
            f"{path}: no code cell tagged {PARAMETERS_TAG!r}; tag the cell holding "
            f"the model names and loop sizes (papermill injects CI values there)"
        )
    for index, cell in enumerate(cells):
        problems += _cell_problems(Path(path), index, cell)
    return problems


def clear_outputs(nb) -> None:
    """In place: clear outputs (except checked cells'), execution counts and per-cell timings."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if not keeps_output(cell):
            cell.outputs = []
        # nbval compares only reference cells that were run, so checked cells keep count 1
        count = 1 if cell.outputs else None
        cell.execution_count = count
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = count


def strip_notebook(path: Path) -> bool:
    """Clear outputs (except ``# NBVAL_CHECK_OUTPUT`` cells) and execution counts; True if changed."""
    import nbformat  # here, not at import: labs and store-outputs import this module

    nb = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
    before = nbformat.writes(nb)
    clear_outputs(nb)
    if nbformat.writes(nb) == before:
        return False
    nbformat.write(nb, str(path))
    return True


def notebooks_in(root: Path) -> list[Path]:
    """The course notebooks under ``root`` (notebooks/, solutions/, labs/), sorted; no checkpoints."""
    found = []
    for folder in COURSE_DIRS:
        for path in (Path(root) / folder).rglob("*.ipynb"):
            parts = path.relative_to(root).parts
            if not any(part.startswith(".") for part in parts):
                found.append(path)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    """Check (or ``--fix``) the given notebooks, default every course notebook; exit 1 on problems."""
    parser = argparse.ArgumentParser(prog="python -m helpers.authoring.nbhygiene", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: all course notebooks)")
    parser.add_argument("--fix", action="store_true", help="clear outputs and execution counts first")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="course folder (default: .)")
    args = parser.parse_args(argv)
    paths = args.paths or notebooks_in(args.root)
    problems = []
    for path in paths:
        if args.fix and strip_notebook(path):
            print(f"cleaned {path}")
        problems += check_notebook(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(paths)} notebook(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
