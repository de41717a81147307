#!/usr/bin/env bash
# What `make setup`, `make test` and `make demo` need from outside the venv, checked in one place.
#
#   tools/check_prereqs.sh [--install] [--venv DIR] [--for WHAT] PREREQ...
#
# PREREQ is `redis-server`, `chromium` (the headless browser of tests/e2e) or `venv` (DIR's
# Python with pytest and the kestrel packages, i.e. a finished `make setup`). Missing system
# packages are installed with apt-get when --install is given and this runs as root with apt-get
# (what `make setup` does); otherwise the script names every missing one with the exact command
# that installs it and exits 1. It runs in well under a second when nothing is missing.
#
# Besides PATH it looks in KESTREL_PREREQ_DIRS (default: /usr/sbin /usr/bin), where Debian puts
# the binaries when PATH lacks them; KESTREL_CHROMIUM=/path/to/chrome names the browser instead.
set -uo pipefail

install=0
venv=.venv
what="this"
wanted=()
while (($#)); do
    case "$1" in
        --install) install=1 ;;
        --venv) venv="$2"; shift ;;
        --for) what="$2"; shift ;;
        redis-server | chromium | venv) wanted+=("$1") ;;
        *) echo "usage: $0 [--install] [--venv DIR] [--for WHAT] redis-server|chromium|venv..." >&2
           exit 2 ;;
    esac
    shift
done
read -r -a extra_dirs <<<"${KESTREL_PREREQ_DIRS-/usr/sbin /usr/bin}"

# The path of the first of the given commands found on PATH or in extra_dirs (status 1: none).
find_command() {
    local name dir
    for name in "$@"; do
        if command -v "$name" 2>/dev/null; then return 0; fi
        for dir in "${extra_dirs[@]}"; do
            if [ -x "$dir/$name" ]; then echo "$dir/$name"; return 0; fi
        done
    done
    return 1
}

# The same names tests/integration/browser_harness.py looks for.
find_chromium() {
    if [ -n "${KESTREL_CHROMIUM:-}" ]; then
        [ -x "$KESTREL_CHROMIUM" ] && echo "$KESTREL_CHROMIUM"
        return
    fi
    find_command chromium chromium-browser google-chrome google-chrome-stable
}

# Debian package names of the missing system prerequisites.
missing_packages() {
    local name
    for name in "${wanted[@]}"; do
        case "$name" in
            redis-server) find_command redis-server >/dev/null || echo redis-server ;;
            chromium) find_chromium >/dev/null || echo chromium ;;
        esac
    done
}

is_root() { [ "$(id -u 2>/dev/null)" = 0 ]; }

mapfile -t missing < <(missing_packages)
if ((${#missing[@]})) && ((install)) && is_root && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
        echo "error: apt-get could not install ${missing[*]}" >&2
        exit 1
    fi
    mapfile -t missing < <(missing_packages)
fi

failed=0
if ((${#missing[@]})); then
    failed=1
    sudo=$(is_root || echo "sudo ")
    echo "error: $what needs ${missing[*]}, not installed. Install with (Debian/Ubuntu):" >&2
    echo "  ${sudo}apt-get update && ${sudo}apt-get install -y ${missing[*]}" >&2
    for name in "${missing[@]}"; do
        case "$name" in
            redis-server) echo "  (macOS: brew install redis)" >&2 ;;
            chromium)
                if [ -n "${KESTREL_CHROMIUM:-}" ]; then
                    echo "  (KESTREL_CHROMIUM=$KESTREL_CHROMIUM is not an executable: fix or unset it)" >&2
                else
                    echo "  (or any Chrome: KESTREL_CHROMIUM=/path/to/chrome; macOS:" \
                        "brew install --cask chromium)" >&2
                fi ;;
        esac
    done
fi

for name in "${wanted[@]}"; do
    [ "$name" = venv ] || continue
    if ! [ -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in ("pytest", "kestrel", "kestrel_local")))
' 2>/dev/null; then
        failed=1
        echo "error: $what needs the venv $venv with the dev dependencies, and it is missing or" \
            "incomplete. Make it: rm -f .stamps/setup && make setup" >&2
    fi
done
exit "$failed"
