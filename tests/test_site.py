"""The built course site, in a browser: its index and a lesson page show a real run.

`make test` runs this after `slm-course book` has built build/book/_build/html/ from the lessons
the same run executed; it is collected only with `--site` (conftest.py), since the site exists
only after that build. Chromium from Debian, driven by Playwright, as in tests/test_browser.py.
"""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from test_browser import BROWSER_MISSING, CHROMIUM, CHROMIUM_ARGS
from test_notebooks import NAN, text_of

from helpers.authoring import book

pytestmark = [pytest.mark.no_server, pytest.mark.site]

HTML = book.BOOK / "_build" / "html"


@pytest.fixture(scope="module")
def site():
    """The built site over HTTP on a free loopback port (as a student's browser would get it)."""
    if not (HTML / "index.html").exists():
        pytest.fail(f"no site at {HTML}: build it first with `slm-course book` (make test does)")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def page():
    if BROWSER_MISSING:
        pytest.skip(BROWSER_MISSING)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def _loaded_images(page, selector: str) -> list[str]:
    """The sources of the images under `selector` that the browser actually decoded."""
    return page.eval_on_selector_all(
        selector, "els => els.filter(i => i.complete && i.naturalWidth > 0).map(i => i.getAttribute('src'))"
    )


def test_index_lists_every_lesson_with_its_run_and_a_diagram(site, page, tmp_path):
    page.goto(f"{site}/index.html")
    text = page.inner_text("main")
    assert "Every page here is one real run" in text
    lesson_links = page.eval_on_selector_all("main table a", "as => as.map(a => a.getAttribute('href'))")
    lessons = [p.stem for p in book.lessons()]
    for stem in lessons:
        assert any(h.startswith(f"notebooks/{stem}.html") for h in lesson_links), (stem, lesson_links)
    assert any(h.startswith("labs/") for h in lesson_links)
    assert any(s.endswith("routing.svg") for s in _loaded_images(page, "main img")), "the routing diagram"
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)


def test_a_lesson_page_shows_executed_output_a_plot_and_its_ledger(site, page, tmp_path):
    page.goto(f"{site}/notebooks/04_cost.html")
    banner = page.inner_text(".admonition.note")
    assert "Executed" in banner and "GB RAM" in banner
    outputs = page.eval_on_selector_all(".cell_output", "els => els.map(e => e.innerText.trim())")
    assert sum(bool(o) for o in outputs) >= 5, "executed text outputs"
    plots = [s for s in _loaded_images(page, ".cell_output img") if ".png" in s or s.startswith("data:image/png")]
    assert plots, "a matplotlib figure from the run"
    assert "Claims ledger, lesson 04" in page.inner_text("main")
    assert page.locator("table").count() >= 2, "the ledger and the lesson's tables rendered as tables"
    page.screenshot(path=str(tmp_path / "lesson.png"), full_page=False)


def test_no_executed_lesson_shows_nan():
    """What the site shows is what the run printed: a number that could not be computed says why, never NaN."""
    import nbformat

    found = []
    for source in book.lessons():
        record = book.RECORDS / source.name
        if record.exists():  # (a missing record: the site build names it itself)
            text = text_of(nbformat.read(record, as_version=4))
            found += [f"{source.name}: {m.group(0).strip()}" for m in NAN.finditer(text)]
    assert not found, "\n".join(found)
