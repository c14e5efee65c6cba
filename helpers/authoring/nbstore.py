"""Keep stored outputs only where nbval checks them (`# NBVAL_CHECK_OUTPUT` cells).

`slm-course store-outputs NOTEBOOK...` executes each notebook against OLLAMA_HOST and writes
it back with every output cleared except those of the checked cells, which nbval compares on
each test run. Model text, timings and plots are never stored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .nbhygiene import clear_outputs


def strip_outputs(nb):
    """Clear outputs and execution counts, except the outputs of checked cells, and papermill's
    run metadata."""
    clear_outputs(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    return nb


def store_outputs(path: Path, timeout_s: int = 600) -> None:
    import nbformat
    import papermill as pm

    executed = pm.execute_notebook(
        str(path), None, kernel_name="python3", cwd=str(path.parent), execution_timeout=timeout_s, progress_bar=False
    )
    original = nbformat.read(path, as_version=4)
    # papermill may add cells (injected parameters); match the original cells by their source
    by_source = {c.source: c for c in executed.cells if c.cell_type == "code"}
    for cell in original.cells:
        if cell.cell_type == "code":
            cell.outputs = by_source.get(cell.source, cell).get("outputs", [])
    strip_outputs(original)
    nbformat.write(original, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebooks", nargs="+", type=Path)


def run(args: argparse.Namespace) -> int:
    for path in args.notebooks:
        store_outputs(path)
        print(f"stored checked outputs of {path}")
    return 0
