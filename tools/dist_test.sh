#!/usr/bin/env bash
# Distributed evaluation with torchrun: tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [test.py args...]
# Runs from the caller's directory (relative paths stay the caller's); the repository is put
# on PYTHONPATH instead.
set -euo pipefail

usage="usage: tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [tools/test.py options...]

Generate and score CHECKPOINT's images with torchrun on NUM_GPUS processes per node
(tools/test.py --launcher pytorch): each process generates every NUM_GPUS-th prompt into the
same image store, then rank 0 scores all images and writes results.json. The images and
results are those of one process. Options after NUM_GPUS go to tools/test.py, e.g. --preset,
--prompts FILE, --metrics, --work-dir DIR. Relative paths are taken from the current
directory. Without CUDA the processes generate on the CPU over gloo.

environment:
  NNODES, NODE_RANK, MASTER_ADDR, PORT  several nodes: set them on each node
                                        (defaults 1, 0, 127.0.0.1, 29500)
  PYTHON                                the interpreter (default: python)"

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "$usage"
    exit 0
fi
if (($# < 3)); then
    echo "tools/dist_test.sh: expected CONFIG, CHECKPOINT and NUM_GPUS, got $# argument(s)" >&2
    echo "$usage" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
if ! [[ $GPUS =~ ^[1-9][0-9]*$ ]]; then
    echo "tools/dist_test.sh: NUM_GPUS must be a positive integer, got '$GPUS'" >&2
    echo "$usage" >&2
    exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m torch.distributed.run --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" --nproc_per_node="$GPUS" \
    "$REPO/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
