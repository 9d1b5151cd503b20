#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG NUM_GPUS [train.py args...]
# Runs from the caller's directory (relative paths stay the caller's); the repository is put
# on PYTHONPATH instead.
set -euo pipefail

usage="usage: tools/dist_train.sh CONFIG NUM_GPUS [tools/train.py options...]

Train CONFIG with torchrun on NUM_GPUS processes per node (tools/train.py --launcher pytorch).
Options after NUM_GPUS go to tools/train.py, e.g. --work-dir DIR, --resume, --amp, --fsdp,
--cfg-options k=v. Relative paths are taken from the current directory. Without CUDA the
processes train on the CPU over gloo.

environment:
  NNODES, NODE_RANK, MASTER_ADDR, PORT  several nodes: set them on each node
                                        (defaults 1, 0, 127.0.0.1, 29500)
  PYTHON                                the interpreter (default: python)"

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "$usage"
    exit 0
fi
if (($# < 2)); then
    echo "tools/dist_train.sh: expected CONFIG and NUM_GPUS, got $# argument(s)" >&2
    echo "$usage" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
if ! [[ $GPUS =~ ^[1-9][0-9]*$ ]]; then
    echo "tools/dist_train.sh: NUM_GPUS must be a positive integer, got '$GPUS'" >&2
    echo "$usage" >&2
    exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m torch.distributed.run --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" --nproc_per_node="$GPUS" \
    "$REPO/tools/train.py" "$CONFIG" --launcher pytorch "$@"
