#!/usr/bin/env bash
# The demo on every GPU of this machine (or of several: run it on each node with the same MASTER_ADDR):
# one rank per GPU, each takes the inputs i with i mod WORLD_SIZE == RANK; rank 0 writes the summary at the end.
#   bash jobs/torchrun_demo.sh 8 -i /data/ffhq -o /data/ffhq_mica [demo.py options ...]
#   NNODES=4 NODE_RANK=$K MASTER_ADDR=node0 bash jobs/torchrun_demo.sh 8 -i ... -o ...   # 4 machines x 8 GPUs
# The same for the benchmark exports: replace demo.py by test.py (test.py --evaluate runs in one process).
# -i and -o must be on a file system every node sees.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NPROC="${1:?usage: jobs/torchrun_demo.sh GPUS_PER_NODE -i INPUT -o OUTPUT [demo.py options]}"
shift
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ "${NNODES:-1}" == 1 ]]; then
    exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" demo.py "$@"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK}" \
    --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}" \
    --nproc_per_node "$NPROC" demo.py "$@"
