# Sourced by tools/dist_train.sh and tools/dist_test.sh: their argument checks and the torchrun
# call. Runs from the caller's directory (relative paths stay the caller's); the repository is
# put on PYTHONPATH instead.

# dist_launch USAGE EXPECTED COUNT TOOL ARGS...: the first COUNT arguments are the positional
# ones, the last of them NUM_GPUS; the others, then --launcher pytorch and the remaining
# arguments, go to tools/TOOL. EXPECTED names the positional ones for the error message.
dist_launch() {
    local usage=$1 expected=$2 count=$3 tool=$4 name
    name="tools/$(basename "${BASH_SOURCE[1]}")"
    shift 4
    if [[ ${1:-} == -h || ${1:-} == --help ]]; then
        echo "$usage"
        exit 0
    fi
    if (($# < count)); then
        echo "$name: expected $expected, got $# argument(s)" >&2
        echo "$usage" >&2
        exit 2
    fi
    local positional=("${@:1:count-1}") gpus=${!count}
    shift "$count"
    if ! [[ $gpus =~ ^[1-9][0-9]*$ ]]; then
        echo "$name: NUM_GPUS must be a positive integer, got '$gpus'" >&2
        echo "$usage" >&2
        exit 2
    fi
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
    exec "${PYTHON:-python}" -m torch.distributed.run --nnodes="${NNODES:-1}" \
        --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
        --master_port="${PORT:-29500}" --nproc_per_node="$gpus" \
        "$repo/tools/$tool" "${positional[@]}" --launcher pytorch "$@"
}
