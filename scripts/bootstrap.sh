#!/usr/bin/env bash
# Create .venv/ with CPython 3.10 and install megzoo (editable) with its test extras.
# Re-runs are cheap: nothing is installed again unless setup.cfg or pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

works() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10 python3; do
        [ -n "$candidate" ] || continue
        if works "$candidate"; then command -v "$candidate" || echo "$candidate"; return 0; fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        candidate="$(pyenv root)/versions/$(pyenv versions --bare 2>/dev/null | grep -E '^3\.10' | tail -n1)/bin/python3.10"
        if works "$candidate"; then echo "$candidate"; return 0; fi
    fi
    return 1
}

stamp="$venv/.megzoo-installed"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && works "$venv/bin/python" && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi

if ! python="$(find_python)"; then
    cat >&2 <<'MSG'
megzoo needs CPython 3.10: MegEngine 1.13.0 (the newest release) ships wheels for Python 3.6-3.10 only.
Install Python 3.10 with its venv module, then run this command again, for example:
    Debian/Ubuntu:  sudo apt-get install python3.10 python3.10-venv   (deadsnakes PPA on newer Ubuntu)
    pyenv:          pyenv install 3.10
    conda:          conda create -n py310 python=3.10
or point PYTHON at an interpreter:  PYTHON=/path/to/python3.10 bash scripts/test.sh
MSG
    exit 3
fi

echo "megzoo: setting up $venv with $python" >&2
[ -x "$venv/bin/python" ] && works "$venv/bin/python" || "$python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e "$root[test]"
echo "$want" > "$stamp"
