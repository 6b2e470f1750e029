#!/usr/bin/env bash
# Set up .venv/ if needed, then run the main job: build a model and print its summary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
"$root/.venv/bin/megzoo" list
exec "$root/.venv/bin/megzoo" summary "${1:-resnet50}"
