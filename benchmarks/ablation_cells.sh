# The nano ablation's cells, sourced by ablation_nano.sh and ablation_nano_default.sh: the paper's
# method, the GRPO baseline, the method minus each component, and the PANW alpha, VMR K, VMR m and
# alternation axes. Every cell but grpo is var_rl with one change.
CELLS=(
  --cell 'grpo: rl.method=grpo'
  --cell 'var_rl: rl.method=var_rl'
  --cell 'no_vmr: rl.method=var_rl rl.vmr.enabled=false'
  --cell 'no_panw: rl.method=var_rl rl.panw.alpha=null'
  --cell 'no_mp: rl.method=var_rl rl.mp.enabled=false'
  --cell 'alpha=0.8: rl.method=var_rl rl.panw.alpha=0.8'
  --cell 'alpha=1.0: rl.method=var_rl rl.panw.alpha=1.0'
  --cell 'alpha=1.2: rl.method=var_rl rl.panw.alpha=1.2'
  --cell 'k=1: rl.method=var_rl rl.vmr.k=1'
  --cell 'k=4: rl.method=var_rl rl.vmr.k=4'
  --cell 'm=64px: rl.method=var_rl rl.vmr.m=64px'
  --cell 'coarse: rl.method=var_rl rl.alternation=coarse'
)
