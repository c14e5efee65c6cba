"""The course site: the lessons as one real run executed them, built into static HTML.

Students and instructors browse before they install, and the source notebooks keep no outputs,
so the site shows the outputs and plots of a real run, with its date, machine and models.

Two steps, so the course is never executed twice:

1. **Record.** `make test` executes every lesson through nbval; `conftest.py` hands each cell's
   outputs to a `Recorder`, which writes `build/executed/NN_name.ipynb` when the lesson's last
   cell has run, with the run's facts in its metadata (`slm_course`): when, on what machine,
   against which server and models, each cell's result and time, and a digest of the source
   cells. `slm-course book --execute` records lessons the same way with papermill, for a clone
   that has no test run (that is what `make book` does).
2. **Build.** `slm-course book` checks every record (complete, no cell failed, made from today's
   source), assembles `build/book/` (the executed lessons, the labs as pages, an index with the
   run's facts, the diagrams, the syllabus, and "What did we find?": every lesson's claims ledger
   from the records, added up by `helpers.findings`) and builds it with Jupyter Book into
   `build/book/_build/html/`.
   The build fails on a lesson that raised, a stale or missing record, any Sphinx warning (a
   cross-reference that points nowhere is one) and any relative link or image in the HTML that
   points to no file or anchor.

Jupyter Book 1 (Sphinx, MyST-NB; MyST markdown like Jupyter Book 2) builds from the package index
alone. Jupyter Book 2 downloads its theme from api.mystmd.org on every fresh build, and that theme
is published neither on PyPI nor on npm, so it cannot build offline.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..paths import course_root

ROOT = course_root()
RECORDS = ROOT / "build" / "executed"
BOOK = ROOT / "build" / "book"
FIGURES = ROOT / "docs" / "figures"
BINDER = "https://mybinder.org/v2/gh/slm-course/slm-course-kit/HEAD?urlpath=lab/tree/{path}"
#: Output types a static page cannot show: a widget (tqdm's bar) records only its first frame.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
LESSON_RE = re.compile(r"^\d\d_.+\.ipynb$")


class BookError(Exception):
    """The site cannot be built; the message lists every problem and the next step."""


def lessons(root: Path = ROOT) -> list[Path]:
    """The numbered lessons of `notebooks/`, in course order."""
    return sorted(p for p in (root / "notebooks").glob("*.ipynb") if LESSON_RE.match(p.name))


def source_digest(nb) -> str:
    """A digest of a notebook's cells (type and source), blind to outputs and metadata: a record
    made from other source text is stale."""
    h = hashlib.sha256()
    for cell in nb.cells:
        h.update(cell.cell_type.encode() + b"\0" + cell.source.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def run_facts(host: str | None) -> dict:
    """When, where and against what a run executes: the date, this machine, the model server
    (password redacted) and the models it has."""
    from ..hardware import machine_summary
    from ..settings import redact_url

    m = machine_summary()
    facts: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{m['cpu']}, {m['cores_usable']} cores, {m['ram_total_gb']:.0f} GB RAM, Python {m['python']}",
        "host": redact_url(host) if host else None,
        "server": None,
        "models": [],
    }
    if host:
        import httpx

        try:
            version = httpx.get(f"{host.rstrip('/')}/api/version", timeout=5).json()
            # the course's own server says so ("slm-course/0.1.0"); Ollama gives its version only
            facts["server"] = version.get("server") or f"Ollama {version.get('version', '?')}"
            tags = httpx.get(f"{host.rstrip('/')}/api/tags", timeout=5).json().get("models", [])
            facts["models"] = sorted(t["name"] for t in tags)
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
    return facts


def _clean_outputs(outputs: list) -> list:
    """Outputs a static page can show: widgets dropped whole. A widget's text fallback is its first
    frame (a progress bar at "0%" although it finished), which would tell the reader something false."""
    kept = []
    for out in outputs:
        data = out.get("data")
        if data and WIDGET_MIME in data:
            continue
        kept.append(copy.deepcopy(dict(out)))
    return kept


@dataclass
class Recorder:
    """Collects the outputs of one lesson's cells as a test run executes them, then writes the
    executed lesson (see the module docstring). One per lesson file."""

    source: Path
    facts: dict
    cells: dict[int, dict] = field(default_factory=dict)

    def add(self, code_index: int, outputs: list, outcome: str, seconds: float) -> None:
        """The `code_index`-th code cell ran: its outputs and "passed" / "failed" / "skipped"."""
        self.cells[code_index] = {"outputs": list(outputs or []), "outcome": outcome, "seconds": round(seconds, 2)}

    def write(self, out_dir: Path = RECORDS) -> Path:
        """The lesson with this run's outputs, execution counts and facts (its time: the sum of
        its cells'); returns its path."""
        import nbformat

        nb = nbformat.read(self.source, as_version=4)
        digest = source_digest(nb)
        outcomes, count = [], 0
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            ran = self.cells.get(i)
            cell.outputs = [nbformat.from_dict(o) for o in _clean_outputs(ran["outputs"])] if ran else []
            for out in cell.outputs:
                if out.get("output_type") == "execute_result":
                    out["execution_count"] = None
            if ran and ran["outcome"] != "skipped":
                count += 1
                cell.execution_count = count
                for out in cell.outputs:
                    if out.get("output_type") == "execute_result":
                        out["execution_count"] = count
            outcomes.append(
                {"outcome": ran["outcome"] if ran else "not run", "seconds": ran["seconds"] if ran else None}
            )
        wall = sum(c["seconds"] for c in self.cells.values())
        nb.metadata["slm_course"] = {
            **self.facts,
            "source": f"notebooks/{self.source.name}",
            "source_digest": digest,
            "cells": outcomes,
            "seconds": round(wall, 1),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / self.source.name
        tmp = path.with_suffix(".tmp")
        nbformat.write(nb, tmp)
        tmp.replace(path)
        return path


def record_problems(source: Path, record: Path) -> list[str]:
    """What keeps `record` from standing for `source` on the site (empty: nothing)."""
    import nbformat

    if not record.exists():
        return [f"{source.name}: no executed copy in {record.parent}"]
    nb = nbformat.read(record, as_version=4)
    meta = nb.metadata.get("slm_course")
    if not meta:
        return [f"{source.name}: {record} was not written by a course run"]
    problems = []
    if meta.get("source_digest") != source_digest(nbformat.read(source, as_version=4)):
        problems.append(f"{source.name}: the executed copy is older than the lesson's source")
    for i, cell in enumerate(meta.get("cells", [])):
        if cell["outcome"] not in ("passed", "skipped"):
            problems.append(f"{source.name}: code cell {i} {cell['outcome']}")
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        for out in cell.outputs:
            if out.get("output_type") == "error":
                problems.append(f"{source.name}: a cell raised {out.get('ename')}: {out.get('evalue')}")
    return problems


def execute(source: Path, out_dir: Path = RECORDS, *, host: str | None = None, timeout_s: int = 900) -> Path:
    """Execute one lesson with its defaults (a learner's run) and record it like a test run. A
    cell that raises or times out is recorded as failed and the cells after it as not run, so the
    build refuses the lesson and says which cell."""
    import tempfile

    import nbformat
    import papermill as pm

    rec = Recorder(source, run_facts(host))
    with tempfile.TemporaryDirectory(prefix="slm-book-") as tmp:
        out = Path(tmp) / source.name
        stopped = None
        try:
            pm.execute_notebook(
                str(source),
                str(out),
                kernel_name="python3",
                cwd=str(source.parent),
                execution_timeout=timeout_s,
                progress_bar=False,
            )
        except Exception as exc:  # noqa: BLE001 - a raising cell, a timeout, a dead kernel: all recorded
            stopped = exc  # papermill writes the notebook up to where it stopped, in every case
        executed = nbformat.read(out, as_version=4) if out.exists() else nbformat.read(source, as_version=4)
    code = [
        c for c in executed.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
    ]
    # papermill marks cells it never reached "completed" when it stops, so whether a cell ran is
    # read from its start time; the last one started is where a timeout or a dead kernel stopped it
    started = [c for c in code if c.metadata.get("papermill", {}).get("start_time")]
    for i, cell in enumerate(code):
        pmeta = cell.metadata.get("papermill", {})
        if cell not in started:
            continue  # never reached: "not run"
        outputs = list(cell.outputs)
        failed = bool(pmeta.get("exception")) or any(o.get("output_type") == "error" for o in outputs)
        if cell is started[-1] and stopped is not None and not isinstance(stopped, pm.PapermillExecutionError):
            failed = True  # a timeout or a dead kernel (a raising cell already shows its error)
            outputs.append(
                {
                    "output_type": "error",
                    "ename": type(stopped).__name__,
                    "evalue": str(stopped).splitlines()[0] if str(stopped) else "",
                    "traceback": [],
                }
            )
        rec.add(i, outputs, "failed" if failed else "passed", pmeta.get("duration") or 0.0)
    if stopped is not None:
        print(
            f"[FAIL] {source.name}: {type(stopped).__name__}: {str(stopped).splitlines()[0] if str(stopped) else ''}",
            file=sys.stderr,
        )
    return rec.write(out_dir)


# ---- the book's source tree ------------------------------------------------------------------


def _title(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _server(meta: dict) -> str:
    """The model server a run used, in words: its kind, and where unless on this machine."""
    from ..net import is_loopback_host

    kind = meta.get("server") or "a model server"
    if kind.startswith("slm-course/"):
        kind = f"the course's offline server ({kind})"
    host = meta.get("host")
    where = "" if not host or is_loopback_host(host) else f" at {host}"
    return f"{kind}{where}"


def _run_line(meta: dict) -> str:
    models = ", ".join(f"`{m}`" for m in meta.get("models", [])) or "models unknown"
    return (
        f"Executed {meta['date']} on {meta['machine']}, against {_server(meta)} holding {models}, "
        f"in {_minutes(meta['seconds'])}."
    )


def _under_title(nb, banner) -> None:
    """Put `banner` (a markdown cell) right under the notebook's title line."""
    for cell in nb.cells:
        lines = cell.source.splitlines() if cell.cell_type == "markdown" else []
        heading = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
        if heading is not None:
            cell.source = "\n".join(lines[: heading + 1] + ["", banner.source, ""] + lines[heading + 1 :])
            return
    nb.cells.insert(0, banner)


def _lesson_page(record: Path, dest: Path) -> dict:
    """Copy an executed lesson into the book with a banner under its title: the run's facts,
    the lab and Binder. Returns what the index needs."""
    import nbformat

    nb = nbformat.read(record, as_version=4)
    meta = nb.metadata["slm_course"]
    stem = record.stem
    has_lab = (ROOT / "labs" / record.name).exists()
    links = [f"[its lab](../labs/{record.name})"] if has_lab else []
    links.append(f"[run it on Binder]({BINDER.format(path=f'notebooks/{record.name}')})")
    banner = nbformat.v4.new_markdown_cell(
        f"```{{admonition}} This page is a real run\n:class: note\n{_run_line(meta)} "
        f"The source notebook, `notebooks/{record.name}`, keeps no outputs: run it yourself, then "
        f"try {' or '.join(links)}.\n```"
    )
    _under_title(nb, banner)
    nbformat.write(nb, dest / "notebooks" / record.name)
    return {"stem": stem, "title": _title(nb, stem), "seconds": meta["seconds"], "meta": meta, "lab": has_lab}


def _lab_page(lab: Path, dest: Path) -> None:
    import nbformat

    nb = nbformat.read(lab, as_version=4)
    banner = nbformat.v4.new_markdown_cell(
        f"```{{admonition}} A lab to do, not a page to read\n:class: tip\nThis is `labs/{lab.name}` "
        f"as you get it: the exercises are yours to finish. Work on it in JupyterLab "
        f"(`make start`) or [on Binder]({BINDER.format(path=f'labs/{lab.name}')}); "
        f"the lesson is [here](../notebooks/{lab.name}).\n```"
    )
    _under_title(nb, banner)
    nbformat.write(nb, dest / "labs" / lab.name)


def _index(pages: list[dict]) -> str:
    meta = pages[0]["meta"]
    rows = "\n".join(
        f"| [{p['title']}](notebooks/{p['stem']}.ipynb) | "
        + (f"[lab](labs/{p['stem']}.ipynb)" if p["lab"] else "-")
        + f" | {_minutes(p['seconds'])} |"
        for p in pages
    )
    total = sum(p["seconds"] for p in pages)
    models = ", ".join(f"`{m}`" for m in meta.get("models", [])) or "unknown"
    binder = BINDER.format(path="notebooks/00_setup.ipynb")
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ", 1)[0]
    intro = "\n".join(line for line in readme.splitlines()[1:] if not line.startswith("[![Binder]"))
    return f"""# SLM Course Kit
{intro.strip()}

```{{admonition}} Every page here is one real run
:class: note
The lessons below were executed top to bottom on {meta["date"][:10]} on {meta["machine"]},
against {_server(meta)}, which held {models}. On such a
machine the whole course ran in {_minutes(total)}. Your numbers will differ: that is the point of
measuring them. Each lesson ends with a *claims ledger*: the article's words, the value this run
measured, and a verdict computed from it.
```

## The lessons

| lesson | hands-on lab | time in this run |
|---|---|---|
{rows}

**[What did we find?](findings.md)** adds up every lesson's claims ledger from this run and answers
the article's three questions: is a small model enough, when to escalate, and what it saves.
The [syllabus](docs/syllabus.md) lays the lessons out as sessions of a term.

Run them yourself: `make start` (see the README), or [open the course on Binder]({binder}).

```{{figure}} docs/figures/routing.svg
:alt: The routing decision: easy prompts go to the small local model, hard ones to the large model.
:width: 100%

The idea the course builds towards (lessons 06 and 07): send each prompt to the cheapest model
likely to answer it well.
```
"""


def _findings(pages: list[dict], records: Path) -> str:
    """The "What did we find?" page from the records' ledgers (BookError when it cannot be built)."""
    from ..findings import FindingsError, page, read_ledgers

    try:
        ledgers = read_ledgers(records / f"{p['stem']}.ipynb" for p in pages)
        titles = {p["stem"][:2]: (p["stem"], p["title"]) for p in pages}
        meta = pages[0]["meta"]
        run = (
            f"Executed {meta['date'][:10]} on {meta['machine']}, against {_server(meta)} holding "
            f"{', '.join(f'`{m}`' for m in meta.get('models', [])) or 'models unknown'}."
        )
        return page(ledgers, run, titles)
    except FindingsError as exc:
        raise BookError(f"the findings page: {exc.message}; next step: {exc.hint}") from exc


def assemble(records: Path = RECORDS, dest: Path = BOOK) -> list[dict]:
    """Write the book's source tree into `dest` from checked records (BookError listing every
    problem otherwise). Returns the lesson pages in order."""
    sources = lessons()
    problems = [p for s in sources for p in record_problems(s, records / s.name)]
    if problems:
        raise BookError(
            "the site is built from executed lessons, and these are not ready:\n  "
            + "\n  ".join(problems)
            + "\nNext step: `make test` (records every lesson), or `slm-course book --execute` "
            "(executes the ones missing or stale)."
        )
    if dest.exists():
        shutil.rmtree(dest)
    for sub in ("notebooks", "labs", "docs/figures"):
        (dest / sub).mkdir(parents=True)
    shutil.copy2(ROOT / "docs" / "instructors.md", dest / "docs" / "instructors.md")
    shutil.copy2(ROOT / "docs" / "syllabus.md", dest / "docs" / "syllabus.md")
    pages = [_lesson_page(records / s.name, dest) for s in sources]
    labs = sorted((ROOT / "labs").glob("*.ipynb"))
    for lab in labs:
        _lab_page(lab, dest)
    for fig in sorted(FIGURES.glob("*.svg")):
        shutil.copy2(fig, dest / "docs" / "figures" / fig.name)  # where the lessons' ../docs/figures/ finds it
    (dest / "findings.md").write_text(_findings(pages, records), encoding="utf-8")
    (dest / "index.md").write_text(_index(pages), encoding="utf-8")
    (dest / "_static").mkdir()
    # lessons print wide tables and code: use the width of the screen
    (dest / "_static" / "course.css").write_text(
        ".bd-page-width { max-width: 100rem; }\n.bd-main .bd-content .bd-article-container { max-width: 70rem; }\n",
        encoding="utf-8",
    )
    toc = ["format: jb-book", "root: index", "parts:", "  - caption: Lessons", "    chapters:"]
    toc += [f"      - file: notebooks/{p['stem']}" for p in pages]
    toc += ["      - file: findings"]
    toc += ["  - caption: Labs", "    chapters:"]
    toc += [f"      - file: labs/{lab.stem}" for lab in labs]
    toc += [
        "  - caption: Teaching it",
        "    chapters:",
        "      - file: docs/syllabus",
        "      - file: docs/instructors",
    ]
    (dest / "_toc.yml").write_text("\n".join(toc) + "\n", encoding="utf-8")
    config = {
        "title": "SLM Course Kit",
        "author": "SLM Course Kit",
        "copyright": "2026",
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "off"},
        "html": {"use_repository_button": False, "home_page_in_navbar": True},
        "sphinx": {
            "config": {
                "nb_execution_mode": "off",
                "html_show_sourcelink": False,
                "html_static_path": ["_static"],
                "html_css_files": ["course.css"],
                "suppress_warnings": ["myst.header"],
                "myst_heading_anchors": 3,
                # "$30,000 ... $3,000" is money, not math; "$\\frac{a}{b}$" stays math
                "myst_dmath_allow_digits": False,
                "myst_dmath_allow_space": False,
            }
        },
    }
    (dest / "_config.yml").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return pages


# ---- the build and its link check ------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key) is not None and not (tag == "link" and a.get("rel") == "preconnect"):
                self.refs.append((tag, a[key]))


def broken_links(html_dir: Path) -> tuple[list[str], set[str]]:
    """Every relative link or image of the site that points to no file or no anchor, and the set
    of external addresses (listed, not fetched: the build runs offline)."""
    parsed: dict[Path, _Links] = {}

    def parse(path: Path) -> _Links:
        if path not in parsed:
            p = _Links()
            p.feed(path.read_text(encoding="utf-8", errors="replace"))
            parsed[path] = p
        return parsed[path]

    broken, external = [], set()
    for page in sorted(html_dir.rglob("*.html")):
        if page.relative_to(html_dir).parts[0] == "_static":
            continue  # the theme's template fragments, not pages
        for tag, ref in parse(page).refs:
            parts = urlsplit(ref)
            if parts.scheme in ("http", "https"):
                external.add(ref)
                continue
            if parts.scheme or ref.startswith("//") or ref in ("", "#"):
                continue  # mailto:, data:, javascript:, the page itself
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            rel = page.relative_to(html_dir)
            if not target.exists():
                broken.append(f"{rel}: <{tag}> {ref} -> no such file")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parse(target).ids:
                broken.append(f"{rel}: <{tag}> {ref} -> no anchor #{parts.fragment}")
    return broken, external


def build(dest: Path = BOOK) -> tuple[Path, set[str]]:
    """Build the HTML with Jupyter Book, warnings as errors, then check every relative link.
    Returns the site's index.html and its external addresses (BookError with the problems otherwise)."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [
        str(exe) if exe.exists() else "jupyter-book",
        "build",
        str(dest),
        "--builder",
        "html",
        "--warningiserror",
        "--keep-going",
        "--quiet",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as exc:
        raise BookError("jupyter-book is not installed; next step: pip install -e '.[test]' (make install)") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise BookError(f"Jupyter Book failed (a warning counts as an error):\n{tail}")
    html_dir = dest / "_build" / "html"
    broken, external = broken_links(html_dir)
    if broken:
        raise BookError("broken links in the site:\n  " + "\n  ".join(broken))
    return html_dir / "index.html", external


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--records",
        type=Path,
        default=RECORDS,
        help=f"where executed lessons are (default {RECORDS.relative_to(ROOT)}: `make test` writes them)",
    )
    p.add_argument(
        "--execute",
        action="store_true",
        help="execute lessons that have no fresh executed copy (against OLLAMA_HOST, or the "
        "course's offline server started for the build)",
    )
    p.add_argument("--out", type=Path, default=BOOK, help="the book's source tree; the HTML goes to OUT/_build/html")


def run(args: argparse.Namespace) -> int:
    todo = [s for s in lessons() if record_problems(s, args.records / s.name)]
    if todo and args.execute:
        from ..serving.launcher import ensure_server, stop
        from ..settings import get_settings

        host = get_settings().ollama_host
        # as in the test run the records usually come from (conftest.py): the kernel and a server
        # this build starts share the cores, and llama.cpp's spin-waiting threads stall when they
        # outnumber the free cores; one thread keeps a 2-core machine steady
        os.environ.setdefault("SLM_THREADS", "1")
        proc = ensure_server(host, user="the site build")
        try:
            from tqdm.auto import tqdm

            for source in tqdm(todo, desc="executing lessons", unit="lesson"):
                execute(source, args.records, host=host)
        finally:
            stop(proc)
    try:
        pages = assemble(args.records, args.out)
        index, external = build(args.out)
    except BookError as exc:
        print(f"[FAIL] {exc}", file=sys.stderr)
        return 1
    print(
        f"The course site: {len(pages)} lessons, {len(list((args.out / 'labs').glob('*.ipynb')))} labs, "
        f"every relative link checked ({len(external)} external addresses not fetched: offline).\n"
        f"Open {index} in a browser, or serve it: python -m http.server -d {index.parent}"
    )
    return 0
