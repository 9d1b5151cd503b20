#!/usr/bin/env bash
# Distributed evaluation with torchrun: tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [test.py args...]
# Runs from the caller's directory (tools/dist_launch.sh).
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

source "$(dirname "${BASH_SOURCE[0]}")/dist_launch.sh"
dist_launch "$usage" 'CONFIG, CHECKPOINT and NUM_GPUS' 3 test.py "$@"
