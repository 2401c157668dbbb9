"""The held-out evaluation of one model at several noise seeds, outside a run: what
`benchmarks/eval_noise.py` (how large is the evaluation's own noise?) and `benchmarks/paired_eval.py`
(what did a run change, read against that noise?) both need. It builds the run's own Trainer in a
scratch directory so that the prompts, reward, sampler and batching are exactly those of
`varrl train`'s evaluation; the noise seed equal to `train.eval_seed` (0 by default) reproduces a run's
step-0 evaluation."""

from __future__ import annotations

import tempfile
from pathlib import Path

from varrl.data.prompts import PromptRecord
from varrl.trainer.config import TrainRunConfig
from varrl.trainer.dist import DistInfo
from varrl.trainer.evaluate import EvalResult, evaluate
from varrl.trainer.loop import Trainer


def evaluate_at_seeds(cfg: TrainRunConfig, seeds: list[int],
                      report=None) -> tuple[list[EvalResult], list[PromptRecord]]:
    """One evaluation of cfg's policy per noise seed (the prompts stay those of cfg.train.eval_seed;
    only the sampling noise changes), and the prompts. report(seed, result), if given, is called
    after each seed: the evaluations take a while and a caller may print as they come."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), DistInfo(), resume=False)
        try:
            for seed in seeds:
                out.append(evaluate(tr.policy, tr.eval_records, cfg.sampler, seed, tr.reward, cfg.train.micro_batch,
                                    DistInfo()))
                if report is not None:
                    report(seed, out[-1])
        finally:
            tr.reward.close()  # the OCR workers must not outlive the caller's use of them
    return out, tr.eval_records
