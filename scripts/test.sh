#!/usr/bin/env bash
# The one test command: install (idempotent), then run every test, slow ones included.
#   bash scripts/test.sh                 # all tests
#   bash scripts/test.sh -m "not slow"   # extra pytest arguments are passed through
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash install.sh
exec .venv/bin/python -m pytest "$@"
