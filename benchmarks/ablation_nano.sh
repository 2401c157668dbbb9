#!/bin/bash
# The nano ablation of docs/ablation-nano.md: the paper's method, the GRPO baseline, the method minus
# each component, and the PANW alpha, VMR K, VMR m and alternation axes; 40 updates per run, held-out
# evaluation on 64 prompts at steps 0, 20 and 40, at the settings that were the defaults when it ran
# (temperature 1, plain log-probs, rl.kl_beta 0.01, train.lr 3e-5), pinned below so that it reproduces the table.
# Every cell but grpo is var_rl with one change. Resumable: rerun it after an interruption.
#   bash benchmarks/ablation_nano.sh                      # all cells, 3 seeds
#   SEEDS=1 bash benchmarks/ablation_nano.sh              # seed 0 of every cell first
#   EXTRA=--report-only bash benchmarks/ablation_nano.sh  # the table of the runs finished so far
exec varrl ablate --name ablation_nano --seeds ${SEEDS:-3} --steps 40 --reference var_rl ${EXTRA} \
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
  sampler.cfg=0 sampler.temperature=1 sampler.logprob_mode=plain rl.kl_beta=0.01 train.lr=3e-5 \
  train.eval_every=20 train.eval_prompts=64 "$@"
