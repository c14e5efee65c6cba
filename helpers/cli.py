"""The `slm-course` command: doctor, serve, lab, labs, bench, store-outputs."""
from __future__ import annotations

import argparse
import sys


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    checks = doctor(args.host, check_bundled=not args.skip_model)
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    from .settings import get_settings

    key = args.api_key or get_settings().serve_api_key
    return serve(args.host, args.port, api_key=key, insecure_open=args.insecure_open,
                 log_level=args.log_level)


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
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (clients: OLLAMA_API_KEY=KEY)")
    p.add_argument("--insecure-open", action="store_true",
                   help="allow a non-loopback host without an API key")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=_serve)

    from . import bench, labs, launcher, nbstore

    p = sub.add_parser("lab", help="JupyterLab on the lessons, with a model server that answers "
                                   "(starts the offline one if needed)")
    launcher.add_arguments(p)
    p.set_defaults(func=launcher.run)

    p = sub.add_parser("labs", help="regenerate labs/ from solutions/ (--check: fail if stale)")
    labs.add_arguments(p)
    p.set_defaults(func=labs.run)

    p = sub.add_parser("bench", help="measure speed (TTFT, tokens/s) of models on this machine")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)

    p = sub.add_parser("store-outputs", help="execute notebooks and keep only # NBVAL_CHECK_OUTPUT outputs")
    nbstore.add_arguments(p)
    p.set_defaults(func=nbstore.run)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
