#!/usr/bin/env bash
# The system packages the course's tests need, installed where this can be done, else one line that
# says exactly what to run. Used by `make test` (strict) and `make start` (--soft: warn and go on).
#   bubblewrap  the sandbox that runs model-written code (lesson 05's HumanEval scoring); without it
#               the sandbox tests that need it skip and the lessons fall back to a Python guard
#   chromium    the browser tests (JupyterLab, the course site); Playwright cannot download one here
# Debian/Ubuntu with root or passwordless sudo: installed with apt-get. macOS and other systems:
# nothing to install here (bubblewrap is Linux-only: those tests skip); the line says what to do.
set -u
soft=0
[ "${1:-}" = "--soft" ] && soft=1
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

stop() {  # say what to do; fail unless --soft
    echo "system packages: $*" >&2
    [ "$soft" = 1 ] && exit 0
    exit 1
}
if [ "$(uname -s)" != "Linux" ]; then
    echo "system packages: $(uname -s) has no bubblewrap (its sandbox tests skip); for the browser" \
         "tests install Chromium (e.g. \`brew install --cask chromium\`) or they skip" >&2
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || stop "missing ${missing[*]}: install them with your package manager, then run make again"
if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    stop "missing ${missing[*]}. Run:  sudo apt-get install -y ${missing[*]}  then run make again"
fi
echo "Installing ${missing[*]} (apt-get)..."
if ! { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    stop "could not install ${missing[*]} with apt-get (see above). Run:  sudo apt-get install -y ${missing[*]}"
fi
echo "Installed ${missing[*]}."
