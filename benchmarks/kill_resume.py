"""Kill `varrl train` with SIGKILL at random moments, resume it, and compare with an uninterrupted run.

Each of --runs runs trains a tiny random nano model with the OCR reward in a worker process
(so a leaked worker would show), is killed at a random moment (half of the runs at a uniformly
random time, half the instant a checkpoint is being written), then resumed with --resume (or
started again when it was killed before it wrote config.yaml: then nothing of it was written).
It prints how many ended bit-identical to the uninterrupted run of the same seed (metrics
without perf/*, final weights, evaluations), how many left a process alive 5 s after the kill,
and how many lost data (the resume failed, or steps are missing from the log).

    python benchmarks/kill_resume.py [--runs 20] [--seed 0] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from proctree import descendants, wait_gone  # noqa: E402

from varrl.models.nano import NanoConfig, NanoVAR  # noqa: E402
from varrl.models.tokenizer import TokenizerConfig, VQTokenizer  # noqa: E402
from varrl.policy.load import save_policy  # noqa: E402
from varrl.policy.nano_policy import NanoPolicy  # noqa: E402


def tiny_model(path: Path) -> None:
    tok_cfg = TokenizerConfig(image_size=32, sides=(1, 2, 4), vocab_size=64, code_dim=8, channels=16, res_blocks=1,
                              refine_channels=4)
    torch.manual_seed(0)
    tok = VQTokenizer(tok_cfg)
    model = NanoVAR(NanoConfig(dim=32, depth=2, heads=2, text_depth=1, max_text_len=128), tok_cfg.schedule(),
                    tok_cfg.vocab_size, tok_cfg.code_dim)
    save_policy(NanoPolicy(model, tok), path)


def train_args(model: Path, root: Path, name: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "varrl", "train", f"policy.path={model}", f"run.dir={root}", f"run.name={name}",
            "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=1", "train.prompts_per_step=2",
            "train.group_size=2", f"train.steps={steps}", "train.eval_every=4", "train.save_every=1",
            "train.eval_prompts=2", "train.micro_batch=4", "train.lr=3e-3", "train.warmup=1", "train.threads=1",
            "rl.vmr.m=2"]


def outcome(run: Path) -> tuple[list[dict], dict[str, torch.Tensor], list]:
    log = [{k: v for k, v in json.loads(ln).items() if not k.startswith("perf/")}
           for ln in (run / "metrics.jsonl").read_text().splitlines()]
    weights = load_file(str(run / "last" / "model.safetensors"))
    return log, weights, json.loads((run / "report.json").read_text())["eval"]


def kill_at_random(cmd: list[str], run: Path, rng: random.Random, ref_s: float, env: dict) -> dict:
    """Start cmd, SIGKILL it at a random moment; return what happened (mode, when, leaked pids)."""
    mode = rng.choice(["time", "checkpoint"])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0, tree = time.time(), set()
    if mode == "time":
        at = rng.uniform(0.0, ref_s)
        while time.time() - t0 < at and proc.poll() is None:
            tree |= descendants(proc.pid)
            time.sleep(0.05)
    else:  # the instant a checkpoint folder is being written (after a random number of them)
        target, seen = rng.randint(1, 6), 0
        while proc.poll() is None and time.time() - t0 < 4 * ref_s:
            if list((run / "checkpoints").glob(".tmp_ckpt_*")) if (run / "checkpoints").exists() else []:
                seen += 1
                if seen >= target:
                    break
                while list((run / "checkpoints").glob(".tmp_ckpt_*")) and proc.poll() is None:
                    time.sleep(0.001)
            time.sleep(0.001)
    tree |= descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leaked = wait_gone(tree, timeout_s=5.0)
    for p in leaked:  # do not let them pile up over the benchmark
        os.kill(p, signal.SIGKILL)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").exists() else []
    return {"mode": mode, "killed_after_s": round(time.time() - t0, 2), "finished_first": proc.returncode == 0,
            "leaked": len(leaked), "checkpoints_left": ckpts[-1] if ckpts else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny_model(root / "model")
        t0 = time.time()
        subprocess.run(train_args(root / "model", root, "reference", args.steps), env=env, check=True,
                       capture_output=True)
        ref_s = time.time() - t0
        ref = outcome(root / "reference")
        print(f"uninterrupted reference: {args.steps} steps in {ref_s:.1f} s")
        identical = leaked = lost = restarted = 0
        for i in range(args.runs):
            name = f"killed{i}"
            what = kill_at_random(train_args(root / "model", root, name, args.steps), root / name, rng, ref_s, env)
            # Killed before config.yaml (while the model loaded and the inputs were checked): nothing of the
            # run was written, so it is started again; else resumed.
            fresh = not (root / name / "config.yaml").exists()
            again = (train_args(root / "model", root, name, args.steps) if fresh
                     else [sys.executable, "-m", "varrl", "train", "--resume", str(root / name)])
            res = subprocess.run(again, env=env, capture_output=True, text=True)
            restarted += fresh
            if res.returncode != 0:
                lost += 1
                last_line = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
                status = f"resume failed: {last_line}"
            else:
                log, weights, evals = outcome(root / name)
                steps_ok = [r["step"] for r in log if "reward/mean" in r] == list(range(1, args.steps + 1))
                same = (log == ref[0] and evals == ref[2] and weights.keys() == ref[1].keys()
                        and all(torch.equal(weights[k], ref[1][k]) for k in weights))
                lost += not steps_ok
                identical += same
                status = "bit-identical" if same else ("steps missing" if not steps_ok else "differs")
            leaked += what["leaked"] > 0
            print(f"run {i + 1:2d}: killed ({what['mode']}) after {what['killed_after_s']:5.2f} s, newest checkpoint "
                  f"{what['checkpoints_left']}, leaked {what['leaked']} process(es), "
                  f"{'started again (no config.yaml yet)' if fresh else 'resumed'} -> {status}", flush=True)
        print(f"\n{args.runs} runs killed and resumed ({restarted} killed before config.yaml, started again): "
              f"{identical} bit-identical, {leaked} leaked a process, {lost} lost data")


if __name__ == "__main__":
    main()
