#!/usr/bin/env bash
# Installs every runtime and test dependency of this project into a virtual environment.
#
#   bash install.sh                 # creates/updates ./.venv (or uses the active venv/conda env)
#   bash install.sh --download      # additionally downloads the public pretrained assets (opt-in)
#
# Idempotent: re-running only installs what is missing. Needs nothing but the Python package index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

DOWNLOAD=0
for arg in "$@"; do
  case "$arg" in
    --download) DOWNLOAD=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (use --download or --help)" >&2; exit 2 ;;
  esac
done

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [[ -n "${CONDA_PREFIX:-}" && "${CONDA_DEFAULT_ENV:-base}" != "base" ]]; then
  PY="$CONDA_PREFIX/bin/python"
else
  PYTHON="${PYTHON:-python3}"
  if [[ ! -x .venv/bin/python ]]; then
    echo "[install] creating virtual environment .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
  fi
  PY=.venv/bin/python
fi
PIP=("$PY" -m pip install --disable-pip-version-check -q)

echo "[install] runtime dependencies"
"${PIP[@]}" -r requirements.txt

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "[install] nvidia-smi works: using onnxruntime-gpu instead of onnxruntime"
  "$PY" -m pip uninstall -y -q onnxruntime >/dev/null 2>&1 || true
  "${PIP[@]}" onnxruntime-gpu==1.32.0
fi

# facenet-pytorch is installed only for its bundled MTCNN weights (MIT licence); our own MTCNN
# implementation reads them. --no-deps: its metadata pins an old torch/torchvision we must not pull.
"${PIP[@]}" --no-deps facenet-pytorch==2.6.0

echo "[install] test dependencies"
"${PIP[@]}" -r requirements-test.txt
"${PIP[@]}" --no-deps smplx==0.1.28

if [[ "$DOWNLOAD" == 1 ]]; then
  bash scripts/download_assets.sh
fi
echo "[install] done: $("$PY" -c 'import torch; print("torch", torch.__version__)')"
