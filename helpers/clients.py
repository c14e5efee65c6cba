"""Small helpers for the ways of calling a model that lessons 00-01 teach."""

from __future__ import annotations

import shutil
import subprocess

from .errors import INSTALL_OLLAMA


def ollama_cli(model: str, prompt: str, *, timeout_s: float = 300) -> str | None:
    """Run `ollama run MODEL PROMPT` and return its answer; None (with a message) without the CLI."""
    exe = shutil.which("ollama")
    if exe is None:
        print(
            "The `ollama` command is not installed on this machine, so this cell only shows it:\n"
            f'    ollama run {model} "{prompt}"\n'
            f"To try it: {INSTALL_OLLAMA}."
        )
        return None
    try:
        proc = subprocess.run([exe, "run", model, prompt], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"`ollama run` gave no answer within {timeout_s:.0f} s - is `ollama serve` running?")
        return None
    if proc.returncode != 0:
        print(
            f"`ollama run` failed: {proc.stderr.strip()[:300]}\n"
            f"Is `ollama serve` running, and is {model} pulled (`ollama pull {model}`)?"
        )
        return None
    return proc.stdout.strip()
