"""The claims ledger: the source article's words, what this run measured, and a verdict.

The short quotes live in `helpers/data/claims.jsonl` (one per line: `id`, `lessons`, `quote`,
`source`; for a claim several lessons check, `differs`: why their verdicts may differ), copied
verbatim from the article (`tests/test_claims.py` checks each one against `../shared/article.txt`).
A lesson ends with a ledger cell: it measures, computes a verdict from the measurement, and shows
the table::

    ledger = Ledger("04")
    ledger.add("cost-gpt4-turbo", measured=f"${total:,.0f}", ok=abs(total - 30_000) < 3_000)
    ledger.add("cost-phi3", measured="no GPU here", ok=None, why="needs a rented GPU server")
    ledger.show()

`ok=True` gives "confirmed", `ok=False` "refuted", `ok=None` "cannot check here: <why>".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from .errors import BadInput

CONFIRMED, REFUTED, CANNOT = "confirmed", "refuted", "cannot check here"
#: The key of a ledger's rows in the metadata of the output `Ledger.show()` displays.
LEDGER_KEY = "slm_course_ledger"
#: Where the article sits beside the project (as CI sees it), relative to the repository root.
ARTICLE_PATH = "../shared/article.txt"


@dataclass(frozen=True)
class Claim:
    """One short verbatim quote from the source article, and the lessons that check it."""

    id: str
    quote: str
    lessons: tuple[str, ...]
    source: str
    #: For a claim checked in several lessons: why their verdicts may differ (what each one judges).
    differs: str = ""


@cache
def load_claims() -> dict[str, Claim]:
    """Every quote of the data file, by id."""
    text = resources.files("helpers").joinpath("data/claims.jsonl").read_text(encoding="utf-8")
    claims = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            claims[row["id"]] = Claim(
                row["id"], row["quote"], tuple(row["lessons"]), row["source"], row.get("differs", "")
            )
    return claims


def claim(claim_id: str) -> Claim:
    """The claim with this id (BadInput naming the known ids when there is none)."""
    claims = load_claims()
    if claim_id not in claims:
        raise BadInput(
            f"no claim {claim_id!r} in helpers/data/claims.jsonl",
            f"known ids: {', '.join(sorted(claims))}; add a verbatim quote there first",
        )
    return claims[claim_id]


def normalise(text: str) -> str:
    """Whitespace collapsed to single spaces, so a quote may span the article's line breaks.

    >>> normalise("  a\\n b\\t c ")
    'a b c'
    """
    return re.sub(r"\s+", " ", text).strip()


def quoted_in(quote: str, article: str) -> bool:
    """True when `quote` appears verbatim in `article`, whitespace aside.

    >>> quoted_in("100-500ms  response", "Speed | 1-3 seconds response | 100-500ms\\nresponse |")
    True
    >>> quoted_in("100B+", "| Parameters | 175B+ (GPT-3/4) |")
    False
    """
    return normalise(quote) in normalise(article)


def verdict(ok: bool | None, why: str = "") -> str:
    """ "confirmed" (ok), "refuted" (not ok), or "cannot check here: why" (ok is None).

    >>> verdict(True), verdict(False, "2x off")
    ('confirmed', 'refuted: 2x off')
    >>> verdict(None, "needs an API key")
    'cannot check here: needs an API key'
    """
    if ok is None:
        if not why.strip():
            raise BadInput(
                "a claim that cannot be checked needs the reason why", 'pass why="..." (e.g. "needs an API key")'
            )
        return f"{CANNOT}: {why}"
    if not isinstance(ok, bool):
        ok = bool(ok)  # numpy.bool_ from a pandas comparison
    word = CONFIRMED if ok else REFUTED
    return f"{word}: {why}" if why.strip() else word


def within(value: float, low: float, high: float, rel_tol: float = 0.0) -> bool:
    """True when `value` lies in [low, high], widened by `rel_tol` of each bound.

    >>> within(0.55, 0.1, 0.5), within(0.55, 0.1, 0.5, rel_tol=0.1)
    (False, True)
    """
    return low * (1 - rel_tol) <= value <= high * (1 + rel_tol)


def close_to(value: float, claimed: float, rel_tol: float = 0.1) -> bool:
    """True when `value` is within `rel_tol` (a share) of `claimed`.

    >>> close_to(1.7, 1.4), close_to(2.2, 2.3)
    (False, True)
    """
    return abs(value - claimed) <= rel_tol * abs(claimed)


@dataclass
class Ledger:
    """A lesson's claims ledger: add one row per claim, then `show()` it (last cell of a lesson)."""

    lesson: str
    rows: list[dict] = field(default_factory=list)

    def add(self, claim_id: str, measured: str, ok: bool | None, why: str = "") -> Ledger:
        """One row: the article's words (by id), the value measured in this run, the verdict."""
        c = claim(claim_id)
        if self.lesson not in c.lessons:
            raise BadInput(
                f"claim {claim_id!r} is not listed for lesson {self.lesson}",
                f"add {self.lesson!r} to its `lessons` in helpers/data/claims.jsonl",
            )
        self.rows.append(
            {
                "claim": claim_id,
                "the article says": c.quote,
                "measured in this run": str(measured),
                "verdict": verdict(ok, why),
            }
        )
        return self

    def judge(self, claim_id: str, finding) -> Ledger:
        """One row from a `helpers.verdicts.Finding` (measured text, ok, why)."""
        return self.add(claim_id, finding.measured, ok=finding.ok, why=finding.why)

    def record(self) -> dict:
        """The ledger as data: what `show()` stores in its output's metadata, so the course site's
        "What did we find?" page can add the lessons up from an executed run."""
        return {"lesson": self.lesson, "rows": [dict(row) for row in self.rows]}

    def table(self):
        """The rows as a DataFrame indexed by claim id."""
        import pandas as pd

        columns = ["claim", "the article says", "measured in this run", "verdict"]
        return pd.DataFrame(self.rows, columns=columns).set_index("claim")

    def counts(self) -> dict[str, int]:
        """How many rows got each verdict word."""
        out = {CONFIRMED: 0, REFUTED: 0, CANNOT: 0}
        for row in self.rows:
            out[row["verdict"].split(":")[0]] += 1
        return out

    def show(self) -> None:
        """Print the source line and the verdict counts, then display the table, quotes uncut."""
        if not self.rows:
            raise BadInput("the ledger is empty", "add at least one claim with ledger.add(...)")
        import pandas as pd

        source = next(iter(load_claims().values())).source
        counts = ", ".join(f"{n} {word}" for word, n in self.counts().items())
        print(f'Claims ledger, lesson {self.lesson}. Quotes from "{source}" ({ARTICLE_PATH}): {counts}.')
        with pd.option_context("display.max_colwidth", None, "display.width", 250):
            try:
                from IPython.display import display
            except ImportError:
                print(self.table().to_string())
            else:
                display(self.table(), metadata={LEDGER_KEY: self.record()})


def model_seconds(
    output_tokens: float,
    bandwidth_gbs: float,
    models: tuple[str, ...] = ("llama3.2:3b", "mistral:7b"),
    quant: str = "Q4_K_M",
) -> dict[str, float]:
    """A lower bound on the generating time of `output_tokens` with larger models on this CPU.

    Each token reads every weight once, so decode speed is at most bandwidth / weight bytes
    (lesson 03's ceiling); `bandwidth_gbs` should be measured (`measure_memory_bandwidth`).
    Real runs are slower (prompt reading, model loading, less than full bandwidth).
    """
    from .edge import MODEL_SHAPES, weights_bytes
    from .hardware import decode_ceiling_tps

    if output_tokens < 0:
        raise BadInput(f"output_tokens must be >= 0, got {output_tokens!r}", "count the tokens generated")
    return {
        m: output_tokens / decode_ceiling_tps(weights_bytes(MODEL_SHAPES[m].n_params, quant), bandwidth_gbs)
        for m in models
    }


def time_statement(
    output_tokens: float, bandwidth_gbs: float, measured_s: float | None = None, upper_bound: bool = False
) -> str:
    """One line for a lesson's end: the tokens it generated (or at most asked for, `upper_bound`),
    and the estimated time those tokens take with 3B/7B models on this CPU."""
    est = model_seconds(output_tokens, bandwidth_gbs)
    parts = ", ".join(
        f"{m} at least {s / 60:.1f} min" if s >= 60 else f"{m} at least {s:.0f} s" for m, s in est.items()
    )
    here = f" (this run's model calls: {measured_s:.0f} s)" if measured_s is not None else ""
    verb = "asked for at most" if upper_bound else "generated"
    return (
        f"This lesson {verb} {output_tokens:,.0f} tokens{here}. Estimate for this CPU "
        f"({bandwidth_gbs:.1f} GB/s measured) with a Q4_K_M model, from the bandwidth ceiling: "
        f"{parts}, plus loading and prompt reading."
    )
