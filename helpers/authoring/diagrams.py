"""The course's diagrams, drawn as plain SVG from code (no plotting library, so the bytes are the
same on every machine; `tests/test_book.py` checks that docs/figures/ holds what this draws).

- `routing_svg()`: the decision lessons 06 and 07 build - router, small model, cheap check,
  escalation, fall-back.
- `memory_budget_svg()`: lesson 08's memory arithmetic for the article's models - weights plus KV
  cache beside the device budgets - from the shapes and formulas in `helpers.edge`.

`python -m helpers.authoring.diagrams` rewrites docs/figures/.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from ..paths import course_root

FIGURES = course_root() / "docs" / "figures"
FONT = "font-family='DejaVu Sans, Arial, sans-serif'"
INK, MUTED = "#1f2933", "#52606d"
SMALL_FILL, LARGE_FILL, CHECK_FILL, PLAIN_FILL = "#d9f2e3", "#fde2cf", "#e4ebf7", "#f5f7fa"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(title, quote=True)}'>\n"
        f"<title>{escape(title)}</title>\n"
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
        f"markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='{INK}'/>"
        "</marker></defs>\n"
        f"<rect width='{width}' height='{height}' fill='white'/>\n" + "\n".join(body) + "\n</svg>\n"
    )


def _text(
    x: float,
    y: float,
    lines: list[str],
    *,
    size: int = 13,
    bold_first: bool = False,
    anchor: str = "middle",
    color: str = INK,
) -> str:
    """Centred lines of text around y (the first one bold when asked)."""
    top = y - (len(lines) - 1) * (size + 3) / 2 + size * 0.35
    out = []
    for i, line in enumerate(lines):
        weight = " font-weight='bold'" if bold_first and i == 0 else ""
        out.append(
            f"<text x='{x:.0f}' y='{top + i * (size + 3):.1f}' text-anchor='{anchor}' {FONT} "
            f"font-size='{size}' fill='{color}'{weight}>{escape(line)}</text>"
        )
    return "\n".join(out)


def _box(cx: float, cy: float, w: float, h: float, lines: list[str], fill: str) -> str:
    return (
        f"<rect x='{cx - w / 2:.0f}' y='{cy - h / 2:.0f}' width='{w:.0f}' height='{h:.0f}' rx='8' "
        f"fill='{fill}' stroke='{INK}' stroke-width='1.2'/>\n" + _text(cx, cy, lines, bold_first=True)
    )


def _diamond(cx: float, cy: float, w: float, h: float, lines: list[str], fill: str) -> str:
    pts = f"{cx},{cy - h / 2} {cx + w / 2},{cy} {cx},{cy + h / 2} {cx - w / 2},{cy}"
    return f"<polygon points='{pts}' fill='{fill}' stroke='{INK}' stroke-width='1.2'/>\n" + _text(
        cx, cy, lines, bold_first=True, size=12
    )


def _arrow(
    points: list[tuple[float, float]], label: str = "", at: tuple[float, float] | None = None, dashed: bool = False
) -> str:
    d = " ".join(f"{'M' if i == 0 else 'L'}{x:.0f},{y:.0f}" for i, (x, y) in enumerate(points))
    dash = " stroke-dasharray='6 4'" if dashed else ""
    out = f"<path d='{d}' fill='none' stroke='{INK}' stroke-width='1.4'{dash} marker-end='url(#arrow)'/>"
    if label and at:
        out += "\n" + _text(at[0], at[1], label.split("\n"), size=12, color=MUTED)
    return out


def routing_svg() -> str:
    """The routing decision of lessons 06 and 07, as a flowchart."""
    body = [
        _box(380, 34, 220, 40, ["a prompt", "from a user or an app"], PLAIN_FILL),
        _diamond(380, 128, 300, 96, ["is it simple?", "router score vs threshold", "(lesson 06)"], CHECK_FILL),
        _box(
            150, 250, 250, 66, ["small model, local", "Ollama on this machine:", "no fee, private, offline"], SMALL_FILL
        ),
        _box(
            610,
            250,
            250,
            66,
            ["large model, cloud API", "best quality on hard tasks:", "$ per token, data leaves"],
            LARGE_FILL,
        ),
        _diamond(150, 368, 240, 80, ["good enough?", "a cheap check (lab 06)"], CHECK_FILL),
        _box(380, 470, 300, 48, ["the answer", "logged: model, latency, cost (lesson 07)"], PLAIN_FILL),
        _arrow([(380, 54), (380, 80)]),
        _arrow([(230, 128), (150, 128), (150, 217)], "yes: easy", (190, 116)),
        _arrow([(530, 128), (610, 128), (610, 217)], "no: hard", (570, 116)),
        _arrow([(150, 283), (150, 328)]),
        _arrow([(150, 408), (150, 470), (230, 470)], "yes", (132, 440)),
        _arrow([(270, 368), (560, 368), (560, 283)], "no: escalate", (415, 356)),
        _arrow([(610, 283), (610, 470), (530, 470)]),
        _arrow([(485, 236), (275, 236)], "cloud down or too slow:\nfall back (lesson 07)", (380, 202), dashed=True),
    ]
    return _svg(
        760,
        510,
        body,
        "The routing decision: easy prompts to the small local model, hard ones to the "
        "large model; a failed check escalates, an unreachable cloud falls back to local.",
    )


def memory_budget_svg(
    models: tuple[str, ...] = ("qwen2.5:0.5b", "gemma:2b", "llama3.2:3b", "phi3:mini", "llama2:7b", "mistral:7b"),
    quant: str = "Q4_K_M",
    n_ctx: int = 4096,
) -> str:
    """Weights + KV cache of each model at `quant` and `n_ctx` tokens, beside the device budgets
    of lesson 08 (all from `helpers.edge`)."""
    from ..edge import DEVICES, MODEL_SHAPES, estimate_memory

    left, right, top, row = 170, 700, 76, 40
    rows = [estimate_memory(MODEL_SHAPES[m], quant, min(n_ctx, MODEL_SHAPES[m].context_length)) for m in models]
    top_gb = max(max(d.budget_gb for d in DEVICES), max((r.weights_bytes + r.kv_bytes) / 1e9 for r in rows))
    scale = (right - left) / (top_gb * 1.05)
    height = top + row * len(rows) + 84
    body = [
        _text(
            390,
            18,
            [f"Memory a model needs at {quant} with {n_ctx:,} tokens of context, and what a device can spare"],
            size=14,
            bold_first=True,
        )
    ]
    for i, r in enumerate(rows):
        y = top + i * row
        w_px, kv_px = r.weights_bytes / 1e9 * scale, r.kv_bytes / 1e9 * scale
        body.append(_text(left - 10, y + 14, [r.model], anchor="end"))
        body.append(f"<rect x='{left}' y='{y}' width='{w_px:.1f}' height='26' fill='#7fb3d5'/>")
        body.append(f"<rect x='{left + w_px:.1f}' y='{y}' width='{kv_px:.1f}' height='26' fill='#f5b971'/>")
        total = (r.weights_bytes + r.kv_bytes) / 1e9
        body.append(_text(left + w_px + kv_px + 6, y + 14, [f"{total:.1f} GB"], anchor="start", size=12, color=MUTED))
    base = top + row * len(rows)
    for j, d in enumerate(DEVICES):
        x = left + d.budget_gb * scale
        body.append(
            f"<line x1='{x:.1f}' y1='{top - 14}' x2='{x:.1f}' y2='{base}' stroke='#b83280' "
            "stroke-width='1.2' stroke-dasharray='5 4'/>"
        )
        body.append(
            _text(
                x,
                top - 22 - (j % 2) * 14,
                [f"{d.name}: {d.budget_gb:g} GB"],
                size=11,
                color="#b83280",
                anchor="end" if x > right - 60 else "middle",
            )
        )
    for gb in range(0, int(top_gb * 1.05) + 1):
        x = left + gb * scale
        body.append(f"<line x1='{x:.1f}' y1='{base}' x2='{x:.1f}' y2='{base + 5}' stroke='{INK}'/>")
        body.append(_text(x, base + 16, [f"{gb}"], size=11, color=MUTED))
    caption = (
        "GB. Weights: parameters x bits per weight / 8. "
        "KV cache: 2 x layers x context x KV heads x head size x 2 bytes."
    )
    body.append(_text((left + right) / 2, base + 34, [caption], size=11, color=MUTED))
    body.append(f"<rect x='{left}' y='{base + 52}' width='14' height='12' fill='#7fb3d5'/>")
    body.append(_text(left + 20, base + 58, ["weights"], anchor="start", size=12))
    body.append(f"<rect x='{left + 100}' y='{base + 52}' width='14' height='12' fill='#f5b971'/>")
    body.append(_text(left + 120, base + 58, ["KV cache"], anchor="start", size=12))
    body.append(
        _text(
            left + 200,
            base + 58,
            ["dashed: the device budgets of lesson 08 (illustrative)"],
            anchor="start",
            size=12,
            color="#b83280",
        )
    )
    return _svg(
        780,
        height,
        body,
        f"Weights and KV cache of {', '.join(models)} at {quant} and {n_ctx} tokens, beside device memory budgets.",
    )


DIAGRAMS = {"routing.svg": routing_svg, "memory_budget.svg": memory_budget_svg}


def write_all(folder: Path = FIGURES) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in DIAGRAMS.items():
        path = folder / name
        path.write_text(draw(), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_all():
        print(f"wrote {p}")
