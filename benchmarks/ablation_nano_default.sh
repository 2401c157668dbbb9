#!/bin/bash
# The nano ablation of docs/ablation-nano.md at the current default (GRPO's settings: rl.kl_beta 0.5,
# train.lr 1e-5, temperature 0.7 with sampling log-probs, 128 held-out prompts): 60 updates per run,
# held-out evaluation at steps 0 and 60 only, one torch thread per run so that three runs share the
# 2 cores (a run at another thread count draws other tokens from the same seed). Every cell but grpo
# is var_rl with one change, as in ablation_nano.sh. Resumable: rerun it after an interruption.
#   bash benchmarks/ablation_nano_default.sh                      # all cells, 3 seeds, one run after another
#   EXTRA=--report-only bash benchmarks/ablation_nano_default.sh  # the table of the runs finished so far
exec varrl ablate --name ablation_default --seeds ${SEEDS:-3} --steps 60 --reference var_rl ${EXTRA} \
  --cell 'grpo: rl.method=grpo' \
  --cell 'var_rl: rl.method=var_rl' \
  --cell 'no_vmr: rl.method=var_rl rl.vmr.enabled=false' \
  --cell 'no_panw: rl.method=var_rl rl.panw.alpha=null' \
  --cell 'no_mp: rl.method=var_rl rl.mp.enabled=false' \
  --cell 'alpha=0.8: rl.method=var_rl rl.panw.alpha=0.8' \
  --cell 'alpha=1.0: rl.method=var_rl rl.panw.alpha=1.0' \
  --cell 'alpha=1.2: rl.method=var_rl rl.panw.alpha=1.2' \
  --cell 'k=1: rl.method=var_rl rl.vmr.k=1' \
  --cell 'k=4: rl.method=var_rl rl.vmr.k=4' \
  --cell 'm=64px: rl.method=var_rl rl.vmr.m=64px' \
  --cell 'coarse: rl.method=var_rl rl.alternation=coarse' \
  train.eval_every=0 train.threads=1 "$@"
