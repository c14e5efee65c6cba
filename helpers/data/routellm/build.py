"""Rebuild gsm8k.csv.gz and mmlu.csv.gz from a clone of lm-sys/RouteLLM (see ATTRIBUTION.md).

Usage: python build.py /path/to/RouteLLM [commit]   (a work tree or a bare git dir; commit defaults to HEAD)
Standard library only. Correctness is copied from RouteLLM's boolean columns, not recomputed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
HERE = Path(__file__).resolve().parent


def show(repo: str, commit: str, path: str) -> str:
    """A file's text at `commit` of the RouteLLM git repository."""
    return subprocess.run(
        ["git", "-C", repo, "show", f"{commit}:{path}"], check=True, capture_output=True
    ).stdout.decode("utf-8")


def flag(value: str) -> int:
    """RouteLLM writes correctness as True/False; anything else is an error."""
    return {"True": 1, "False": 0}[value]


def contaminated(repo: str, commit: str, bench: str) -> set[str]:
    text = show(repo, commit, f"routellm/evals/{bench}/contaminated_prompts.jsonl")
    return {json.loads(line)["eval_prompt"] for line in text.splitlines() if line.strip()}


def write(name: str, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with open(HERE / name, "wb") as raw:  # mtime=0 and no file name: the same bytes on every rebuild
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            gz.write(buffer.getvalue().encode("utf-8"))


def main(repo: str, commit: str = "HEAD") -> None:
    csv.field_size_limit(1 << 30)
    files = subprocess.run(
        ["git", "-C", repo, "ls-tree", "-r", "--name-only", commit, "routellm/evals/mmlu/responses/"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()

    gsm_bad = contaminated(repo, commit, "gsm8k")
    rows = []
    for i, r in enumerate(csv.DictReader(io.StringIO(show(repo, commit, "routellm/evals/gsm8k/gsm8k_responses.csv")))):
        rows.append(
            [
                i,
                r["prompt"],
                flag(r[WEAK]),
                flag(r[STRONG]),
                int(r["prompt"] in gsm_bad),
                len(r[f"{WEAK}_response"]),
                len(r[f"{STRONG}_response"]),
            ]
        )
    write(
        "gsm8k.csv.gz",
        [
            "id",
            "prompt",
            "mixtral_correct",
            "gpt4_correct",
            "routellm_contaminated",
            "mixtral_response_chars",
            "gpt4_response_chars",
        ],
        rows,
    )

    mmlu_bad = contaminated(repo, commit, "mmlu")
    rows = []
    for path in sorted(files):
        subject = path.rsplit("/", 1)[1].removeprefix("mmlu_").removesuffix(".csv")
        for i, r in enumerate(csv.DictReader(io.StringIO(show(repo, commit, path)))):
            rows.append(
                [f"{subject}/{i}", subject, r["prompt"], flag(r[WEAK]), flag(r[STRONG]), int(r["prompt"] in mmlu_bad)]
            )
    write("mmlu.csv.gz", ["id", "subject", "prompt", "mixtral_correct", "gpt4_correct", "routellm_contaminated"], rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
