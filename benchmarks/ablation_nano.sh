#!/bin/bash
# The nano ablation of docs/ablation-nano.md: the paper's method, the GRPO baseline, the method minus
# each component, and the PANW alpha, VMR K, VMR m and alternation axes; 40 updates per run, held-out
# evaluation on 64 prompts at steps 0, 20 and 40, at the settings that were the defaults when it ran
# (temperature 1, plain log-probs, rl.kl_beta 0.01, train.lr 3e-5), pinned below so that it reproduces the table.
# Every cell but grpo is var_rl with one change. Resumable: rerun it after an interruption.
#   bash benchmarks/ablation_nano.sh                      # all cells, 3 seeds
#   SEEDS=1 bash benchmarks/ablation_nano.sh              # seed 0 of every cell first
#   EXTRA=--report-only bash benchmarks/ablation_nano.sh  # the table of the runs finished so far
source "$(dirname "$0")/ablation_cells.sh"
exec varrl ablate --name ablation_nano --seeds ${SEEDS:-3} --steps 40 --reference var_rl ${EXTRA} \
  "${CELLS[@]}" \
  sampler.cfg=0 sampler.temperature=1 sampler.logprob_mode=plain rl.kl_beta=0.01 train.lr=3e-5 \
  train.eval_every=20 train.eval_prompts=64 "$@"
