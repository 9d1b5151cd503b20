#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG NUM_GPUS [train.py args...]
# Runs from the caller's directory (tools/dist_launch.sh).
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

source "$(dirname "${BASH_SOURCE[0]}")/dist_launch.sh"
dist_launch "$usage" 'CONFIG and NUM_GPUS' 2 train.py "$@"
