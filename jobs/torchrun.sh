#!/usr/bin/env bash
# Train MICA on N GPUs of this machine (or N CPU processes with gloo when there is no GPU).
#   bash jobs/torchrun.sh 4 --cfg configs/mica.yml [KEY VALUE ...]
# dataset.batch_size is per process. All logic lives in train.py; this only launches it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NPROC="${1:?usage: jobs/torchrun.sh NPROC --cfg configs/mica.yml [KEY VALUE ...]}"
shift
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" train.py "$@"
