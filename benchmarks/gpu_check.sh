#!/bin/bash
# The GPU checks in one command, for a session that is lent a GPU (its parts' limits add to 510 s;
# nothing is downloaded there, every model is random weights in the released layouts):
#
#   bash benchmarks/gpu_wheels.sh                  # here, first: the wheels the device image lacks
#   device run, carry [".whl"]: bash benchmarks/gpu_check.sh
#
# It prints, and writes to $OUT/gpu_check.log (runs/gpu_check/ without $OUT):
#   1. Infinity-125M at 256 px, fp32 and bf16 autocast: step seconds, peak memory, and the largest
#      gap between the log-probs the sampler stored and the update's re-scoring of the same tokens;
#   2. Infinity-2B at 1024 px (the 1M schedule, T5 of Flan-T5-XL's size), bf16 autocast with
#      gradient checkpointing: seconds of one RL step and peak memory;
#   3. VAR-d16's sampler (bf16 autocast) and what re-scoring its images costs;
#   4. `varrl train`'s step on the nano model with the policy on the GPU and OCR on the CPU cores.
# Each part has its own time limit, so one that hangs or runs out of memory leaves the rest.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on a GPU machine')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
part() {  # part LIMIT_S COMMAND...: run with a time limit, report its exit status and seconds
  local limit=$1 start=$SECONDS; shift
  echo; echo "### $* (limit ${limit} s)"
  timeout "$limit" "$@"
  echo "### exit $? after $((SECONDS - start)) s"
}
part 80 python3 benchmarks/infinity_step.py --steps 2 policy.device=cuda
part 80 python3 benchmarks/infinity_step.py --steps 2 policy.device=cuda policy.dtype=bfloat16
part 240 python3 benchmarks/infinity_step.py --preset infinity_2b --schedule 1M --t5-layers 24 --steps 2 \
  policy.device=cuda policy.dtype=bfloat16 train.micro_batch=2 train.grad_checkpointing=true
part 50 python3 benchmarks/var_sampler.py --device cuda --repeats 3
part 60 python3 benchmarks/rl_step.py --steps 3 policy.device=cuda
