#!/bin/bash
# The nano ablation of docs/ablation-nano.md at the current default (GRPO's settings: rl.kl_beta 0.5,
# train.lr 1e-5, temperature 0.7 with top-k 2 / top-p 0.9 and sampling log-probs, 128 held-out
# prompts; the table in docs/ablation-nano.md ran before the truncation was the default: append
# sampler.top_k=0 sampler.top_p=0 to reproduce it): 60 updates per run,
# held-out evaluation at steps 0 and 60 only, one torch thread per run so that three runs share the
# 2 cores (a run at another thread count draws other tokens from the same seed), JOBS (default 3) side by
# side. Every cell but grpo is var_rl with one change, as in ablation_nano.sh. Resumable: rerun it after
# an interruption (Ctrl-C stops the runs at their last step).
#   bash benchmarks/ablation_nano_default.sh                      # all cells, 3 seeds, three runs at a time
#   EXTRA=--report-only bash benchmarks/ablation_nano_default.sh  # the table of the runs finished so far
source "$(dirname "$0")/ablation_cells.sh"
exec varrl ablate --name ablation_default --seeds ${SEEDS:-3} --steps 60 --reference var_rl --jobs ${JOBS:-3} ${EXTRA} \
  "${CELLS[@]}" \
  train.eval_every=0 train.threads=1 "$@"
