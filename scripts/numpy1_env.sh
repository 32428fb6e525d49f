#!/usr/bin/env bash
# Builds .venv-numpy1: Python 3.11 with numpy 1.25.x, the environment of a client of the tracker's
# files that still runs numpy 1 (FlashAvatar pins numpy <= 1.21, SplattingAvatar 1.23; 1.23-1.25 are
# the numpy-1 releases with Python 3.11 wheels, and 1.26 already reads numpy 2's module names, so it
# would prove nothing). No torch: such a client's files are read with zipfile + pickle, which is all a
# .frame needs (it holds numpy arrays only). Used by tests/test_numpy1_frames.py and
# tests/test_readme_snippets.py, which skip without it. About 10 s with a warm pip cache.
#
# Usage: bash scripts/numpy1_env.sh [PYTHON]   (default: python3.11)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3.11}"
ENV=.venv-numpy1
if [ -x "$ENV/bin/python" ] && "$ENV/bin/python" -c 'import numpy, sys; sys.exit(not numpy.__version__.startswith("1.25"))' 2>/dev/null; then
    echo "$ENV: numpy $("$ENV/bin/python" -c 'import numpy; print(numpy.__version__)') (already built)"
    exit 0
fi
"$PY" -m venv "$ENV"
"$ENV/bin/python" -m pip install -q --disable-pip-version-check "numpy>=1.25,<1.26"
echo "$ENV: numpy $("$ENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
