#!/usr/bin/env bash
# Set up .venv/ if needed, run `ruff check .` (pyproject.toml's settings), then the test suite.
# Extra arguments go to pytest. A ruff finding fails the run before any test starts.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
if ! "$root/.venv/bin/ruff" check .; then
    echo "megzoo: ruff check found the problems above (fix them, or see pyproject.toml [tool.ruff])" >&2
    exit 1
fi
exec "$root/.venv/bin/python" -m pytest "$@"
