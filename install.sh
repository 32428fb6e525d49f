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

# mediapipe 0.10.14 ships the FaceMesh models (478 points with iris) inside its wheel: track.py's
# offline landmarks. --no-deps: its metadata asks for protobuf<5 (onnx and tensorboard need >=6.31.1;
# the protobuf shim in micalib/tracking/landmarks.py makes 0.10.14 work with it), jax, jaxlib and
# sounddevice (not used by FaceMesh) and opencv-contrib-python (would clash with our OpenCV). What
# FaceMesh does import (absl-py, attrs, flatbuffers, matplotlib) is pinned in requirements.txt.
# `pip check` therefore lists mediapipe's declared requirements as unmet: expected. Where no wheel
# exists (e.g. Python >= 3.13) track.py still runs from your own landmarks (--landmarks FILE.npz).
echo "[install] mediapipe (offline face landmarks for track.py)"
if ! "${PIP[@]}" --no-deps mediapipe==0.10.14; then
  echo "[install] WARNING: mediapipe 0.10.14 could not be installed for $("$PY" --version); track.py will need --landmarks FILE.npz" >&2
fi

echo "[install] test dependencies"
"${PIP[@]}" -r requirements-test.txt
"${PIP[@]}" --no-deps smplx==0.1.28

# The Khronos glTF validator (npm, pinned in tests/node/package-lock.json) for tests/test_gltf.py;
# without node/npm that test is skipped. Blender and Chromium (the other readers the tests use):
# scripts/install_readers.sh (apt-get, root).
if command -v npm >/dev/null 2>&1; then
  echo "[install] tests/node: the Khronos glTF validator (npm ci)"
  if ! (cd tests/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    echo "[install] WARNING: npm ci in tests/node failed; the glTF validator test will be skipped" >&2
  fi
fi

if [[ "$DOWNLOAD" == 1 ]]; then
  bash scripts/download_assets.sh
fi
echo "[install] done: $("$PY" -c 'import torch; print("torch", torch.__version__)')"
