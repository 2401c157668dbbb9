"""The `varrl` command line: thin wrappers that parse arguments and call recipes."""

from __future__ import annotations

import argparse
import os
import sys


class UsageError(ValueError):
    pass


def _pretrain(args: argparse.Namespace) -> None:
    from varrl.recipes.pretrain import export_run, run_pretrain

    if args.export:
        if not args.resume:
            raise UsageError("--export needs --resume RUN_DIR: the run whose checkpoints to export")
        print(f"exported {args.resume} to {export_run(args.resume, args.export, args.overrides)}")
        return
    run_dir = run_pretrain(args.config, args.overrides, args.resume)
    print(f"pretraining finished: {run_dir}")


def _train(args: argparse.Namespace) -> None:
    from varrl.recipes.train import run_train

    run_dir, report = run_train(args.config, args.overrides, args.resume)
    if report is not None:
        print(f"training finished: {run_dir} (report: {run_dir / 'report.md'})")


def _ablate(args: argparse.Namespace) -> None:
    from varrl.recipes.ablate import run_ablation

    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    if args.name is not None and (args.name in ("", ".", "..") or any(c in args.name for c in "/\\")):
        raise UsageError(f"--name must be one folder name (no '/', not '.' or '..'), got {args.name!r}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    root = run_ablation(args.config, args.grid, args.seeds, args.steps, args.name, args.overrides, args.cell,
                        args.report_only, args.reference, args.jobs)
    print(f"{'ablation report' if args.report_only else 'ablation finished'}: {root / 'ablation.md'}")


VAR_CFG = 1.5
"""guidance the published VAR checkpoints sample with (their demo settings)"""


def default_sampler(checkpoint: str | None):
    """The sampler `varrl sample` / `varrl eval` use for the flags not given: a `varrl train` run's
    own `sampler` (the run directory or its last/: sample as it trained), Infinity's official one
    for an Infinity model (`--cfg 3` as Infinity counts it = cfg 2, constant, top-p 0.97), guidance
    1.5 for a published VAR checkpoint (file or converted directory), else the nano model's rollout
    default (no guidance, temperature 0.7, top-k 2 / top-p 0.9: it reads best that way)."""
    from pathlib import Path

    from varrl.config import load_config
    from varrl.policy.infinity_policy import official_sampler
    from varrl.policy.load import shipped_model_dir
    from varrl.policy.sampler import SamplerConfig
    from varrl.trainer.config import TrainRunConfig, apply_method_preset, nano_sampler

    root = shipped_model_dir() if checkpoint is None else Path(checkpoint)
    for run_cfg in (root / "config.yaml", root.parent / "config.yaml" if root.name == "last" else None):
        if run_cfg is not None and run_cfg.is_file():  # a `varrl train` run (or its last/): sample as it trained
            return load_config(TrainRunConfig, run_cfg, [], apply_method_preset).sampler
    kind = model_kind(root)
    if kind == "infinity":
        return official_sampler()
    return SamplerConfig(cfg=VAR_CFG) if kind == "var" else nano_sampler()


def model_kind(root) -> str:
    """'infinity', 'var' or 'nano', read off the path (a broken folder: 'nano', and load_policy
    then reports what is wrong with it)."""
    import json

    from varrl.models.infinity.files import is_infinity_path
    from varrl.policy.infinity_load import INFINITY_FORMAT
    from varrl.policy.var_load import VAR_FORMAT, is_checkpoint_file

    if root.exists() and is_infinity_path(root):
        return "infinity"
    if root.is_file() and is_checkpoint_file(root):
        return "var"
    for meta in (root / "config.json", root / "last" / "config.json"):
        if meta.is_file():
            try:
                fmt = json.loads(meta.read_text()).get("format")
            except (json.JSONDecodeError, AttributeError):
                return "nano"  # load_policy reports a broken config.json with its own error
            return {INFINITY_FORMAT: "infinity", VAR_FORMAT: "var"}.get(fmt, "nano")
    return "nano"


def default_cfg(checkpoint: str | None) -> float:
    """The guidance strength used when --cfg is not given (see default_sampler)."""
    return default_sampler(checkpoint).cfg


SAMPLER_FLAGS = ("cfg", "cfg_schedule", "top_k", "top_p", "temperature", "tail_temperature", "tail_after")


def _sampler(args: argparse.Namespace, checkpoint: str | None):
    import dataclasses

    from varrl.policy.sampler import SamplerConfigError

    given = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k, None) is not None}
    try:
        return dataclasses.replace(default_sampler(checkpoint), **given)
    except SamplerConfigError as e:  # name the flag the user typed, not the config field
        raise UsageError(f"--{e.key.replace('_', '-')} {e.problem}") from None


def _model_kwargs(args: argparse.Namespace) -> dict:
    """load_policy's keyword arguments from the model flags of sample / eval."""
    return {"vae": args.vae, "text_encoder": args.text_encoder, "schedule": args.schedule,
            "aspect_ratio": args.aspect_ratio, "dtype": args.dtype}


def _check_seed(seed: int) -> None:
    from varrl.config_checks import SEED_LIMIT

    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"--seed must be in 0..{SEED_LIMIT - 1}, got {seed}")


def _sample(args: argparse.Namespace) -> None:
    import torch

    from varrl.fileio import atomic_save_image, check_output_file, image_format
    from varrl.policy.load import load_policy
    from varrl.policy.sampler import SamplerConfigError
    from varrl.viz import image_grid, to_uint8

    if args.n < 1:
        raise UsageError("--n must be at least 1")
    if args.cols < 0 or args.scale < 1:
        raise UsageError(f"--cols must be >= 0 (0: up to 8) and --scale >= 1, got {args.cols} and {args.scale}")
    _check_seed(args.seed)
    # The output is checked before the model loads and the samples are drawn: no work is lost to a bad name.
    out = check_output_file(args.out, "--out")
    fmt = image_format(out, "--out")
    sampler = _sampler(args, args.checkpoint)
    from varrl.trainer.checks import check_device

    check_device(args.device, "--device")
    policy = load_policy(args.checkpoint, device=_device(args.device), **_model_kwargs(args))
    try:
        sampler.check_schedule(policy.schedule)
    except SamplerConfigError as e:
        raise UsageError(f"--tail-after {e.problem}") from None
    traj = policy.rollout(args.prompt, n=args.n, sampler=sampler, generator=torch.Generator().manual_seed(args.seed))
    images = to_uint8(policy.decode(traj))
    captions = list(traj.prompts)
    if args.ocr:
        from varrl.ocr import OcrPool

        with OcrPool(workers=0) as ocr:
            captions = [f"{c} | read: {' '.join(w.text for w in r)}" for c, r in zip(captions, ocr.read(list(images)))]
    grid = image_grid(images, captions, cols=args.cols or min(len(images), 8), scale=args.scale)
    atomic_save_image(grid.convert("RGB") if fmt == "JPEG" else grid, out, fmt)
    print(f"wrote {len(images)} samples to {out}")


def _device(name: str) -> str:
    from varrl.device import resolve_device

    return str(resolve_device(name))


def _eval(args: argparse.Namespace) -> None:
    from varrl.eval.cvtg import markdown_table
    from varrl.recipes.evaluate import EvalConfig, run_eval

    _check_seed(args.seed)
    sampler = _sampler(args, args.checkpoint)
    cfg = EvalConfig(benchmark=args.benchmark, data=args.data, checkpoint=args.checkpoint, images=args.images,
                     out=args.out or f"runs/eval_{args.benchmark}", limit=args.limit, seed=args.seed,
                     batch=args.batch, ocr_workers=args.ocr_workers, clip_model=args.clip_model, device=args.device,
                     sampler=sampler, hpsv3_backbone=args.hpsv3_backbone, hpsv3_checkpoint=args.hpsv3_checkpoint,
                     **_model_kwargs(args))
    metrics = run_eval(cfg)
    if "by_regions" in metrics:
        print(markdown_table(metrics), end="")
    elif "by_category" in metrics:
        from varrl.eval.hpsv3_bench import markdown_table as hpsv3_table

        print(hpsv3_table(metrics, metrics["source"]), end="")
    print(f"wrote {cfg.out}/metrics.json and {cfg.out}/metrics.md")


def _data(args: argparse.Namespace) -> None:
    from varrl.data import regions

    if args.data_command == "synth-cvtg":
        from varrl.eval.synthbench import build_synth_cvtg

        files = build_synth_cvtg(args.out, args.per_file, args.seed, render=args.render)
        print(f"wrote {len(files)} files under {args.out}" + (f"; reference renderings in {args.render}"
                                                               if args.render else ""))
        return
    if args.data_command != "stats":
        from varrl.fileio import check_output_file

        check_output_file(args.out, "--out")
    records = regions.read_records(args.prompts)
    if args.data_command == "stats":
        print(regions.format_histogram(regions.histogram(records)))
        return
    if args.data_command == "sample":
        chosen = regions.sample_mix(records, regions.parse_target(args.target), args.n, args.seed)
    else:
        chosen = regions.filter_bins(records, regions.parse_bins(args.bins))
    regions.write_records(chosen, args.out)
    print(f"wrote {len(chosen)} of {len(records)} prompts to {args.out}")
    print(regions.format_histogram(regions.histogram(chosen)))


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """What load_policy needs besides the checkpoint (an RL run's last/ names its own files)."""
    p.add_argument("--vae", default=None, help="tokenizer file: of a VAR checkpoint (default: vae_ch160v4096z32.pth "
                   "beside it), or the BSQ tokenizer of an Infinity model (infinity_vae_d32reg.pth for Infinity-2B)")
    p.add_argument("--text-encoder", default=None, metavar="DIR",
                   help="Infinity: the Flan-T5-XL folder (tokenizer + encoder)")
    p.add_argument("--schedule", default=None, help="Infinity: scale schedule 1M (1024 px, the default), 0.60M, "
                   "0.25M (512 px) or 0.06M (256 px); also 1024px .. 256px")
    p.add_argument("--aspect-ratio", type=float, default=None, help="Infinity: image height / width (the nearest "
                   "released template; default 1.0)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="Infinity: compute dtype (bfloat16: autocast, for GPUs)")


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """Sampling flags; each one not given comes from default_sampler (the run's own sampler, Infinity's
    official one, ...)."""
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance strength (default: a run "
                   "directory's own sampler.cfg, 2 for Infinity models (Infinity's own --cfg 3), 1.5 for published "
                   "VAR checkpoints, 0 for the nano model)")
    p.add_argument("--cfg-schedule", choices=["linear", "constant"], default=None,
                   help="(default: the run's; constant for Infinity models, else linear)")
    p.add_argument("--top-k", type=int, default=None,
                   help="keep the k likeliest tokens (default: the run's; 2 for the nano model, else 0: off)")
    p.add_argument("--top-p", type=float, default=None,
                   help="keep the likeliest tokens up to this probability mass (default: the run's; 0.9 for the "
                        "nano model, 0.97 for Infinity models, else 0: off)")
    p.add_argument("--temperature", type=float, default=None,
                   help="(default: the run's; 0.7 for the nano model, else 1)")
    p.add_argument("--tail-temperature", type=float, default=None,
                   help="temperature of the grids after --tail-after (default: the run's, else none: "
                        "--temperature on every grid)")
    p.add_argument("--tail-after", default=None,
                   help="the last grid at --temperature: a step count, 64px or 8x8 (default: the run's)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="varrl", description="RL fine-tuning of next-scale (VAR) image generators")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: VARRL_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    pt = sub.add_parser("pretrain", help="train the nano tokenizer and transformer from scratch")
    pt.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    pt.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    pt.add_argument("--export", default=None, metavar="DIR",
                    help="with --resume: only write the run's model directory to DIR (no training)")
    pt.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    pt.set_defaults(func=_pretrain)

    tr = sub.add_parser("train", help="RL-tune a policy (default: the shipped nano model on text rendering)")
    tr.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    tr.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    tr.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=20 rl.kl_beta=0.02")
    tr.set_defaults(func=_train)

    ab = sub.add_parser("ablate", help="run a grid of configs x seeds and tabulate the final evaluations")
    ab.add_argument("--config", default=None, help="base YAML config (default: built-in defaults)")
    ab.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="an axis of the grid, e.g. rl.panw.alpha=0.6,0.8,1.0 (repeat for more axes)")
    ab.add_argument("--cell", action="append", default=[], metavar="'NAME: KEY=VALUE ...'",
                    help="a named cell and its overrides, e.g. --cell 'no_vmr: rl.vmr.enabled=false' (repeat; "
                         "for cells that are not a product of axes, such as a method minus each component)")
    ab.add_argument("--report-only", action="store_true",
                    help="only write ablation.md/json/png from the runs finished so far")
    ab.add_argument("--reference", default=None, metavar="CELL",
                    help="the cell every other is compared with, seed by seed (default: the first cell)")
    ab.add_argument("--seeds", type=int, default=3)
    ab.add_argument("--steps", type=int, default=None, help="train.steps for every run")
    ab.add_argument("--jobs", type=int, default=1,
                    help="runs side by side, each a `varrl train` process with its log in <cell>/seed<k>.log "
                         "(default 1: one after another, in this process); give each a share of the cores "
                         "with train.threads, e.g. --jobs 3 train.threads=1 on 2 cores")
    ab.add_argument("--name", default=None, help="directory under run.dir (default: ablate_<config name>)")
    ab.add_argument("overrides", nargs="*", help="key.sub=value overrides for every run")
    ab.set_defaults(func=_ablate)

    sp = sub.add_parser("sample", help="sample images from a model and write a PNG grid")
    sp.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    sp.add_argument("--n", type=int, default=4, help="samples per prompt")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default="samples.png", help="PNG file to write")
    sp.add_argument("--checkpoint", default=None, help="model directory or RL run (default: the shipped nano "
                    "model), a published VAR checkpoint file (then --prompt takes class labels, e.g. --prompt 207), "
                    "or a released Infinity transformer (.pth, .safetensors or shard folder; see --text-encoder)")
    sp.add_argument("--device", default="cpu", help="device to sample on (cpu, cuda, auto)")
    add_model_flags(sp)
    add_sampler_flags(sp)
    sp.add_argument("--cols", type=int, default=0, help="grid columns (default: up to 8)")
    sp.add_argument("--scale", type=int, default=1, help="upscale each image by this factor")
    sp.add_argument("--ocr", action="store_true", help="caption each image with what the OCR engine reads")
    sp.set_defaults(func=_sample)

    ev = sub.add_parser("eval", help="generate a benchmark's images and score them (or score existing images)")
    ev.add_argument("--benchmark", default="cvtg", help="benchmark to run (default: cvtg)")
    ev.add_argument("--data", default=None, help="benchmark root (default: the shipped synthetic CVTG benchmark)")
    ev.add_argument("--checkpoint", default=None, help="model directory (default: the shipped nano model)")
    ev.add_argument("--images", default=None, metavar="DIR",
                    help="score the images in DIR ({subset}/{N}/{index}.png) instead of generating")
    ev.add_argument("--out", default=None, help="output folder (default: runs/eval_<benchmark>)")
    ev.add_argument("--limit", type=int, default=0, help="only this many prompts, round-robin over files (0: all)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch", type=int, default=16, help="prompts per generation batch")
    ev.add_argument("--ocr-workers", type=int, default=2, help="OCR worker processes (0: in this process)")
    ev.add_argument("--clip-model", default=None, metavar="PATH_OR_ID",
                    help="CLIP model for CLIPScore: a local CLIPModel directory or a hub id (default: none, "
                         "clip_score is null)")
    ev.add_argument("--device", default="auto", help="device for generation and CLIP (auto, cpu, cuda)")
    ev.add_argument("--hpsv3-backbone", default=None, metavar="DIR",
                    help="--benchmark hpsv3: local Qwen2-VL-7B-Instruct directory (config, tokenizer, preprocessor)")
    ev.add_argument("--hpsv3-checkpoint", default=None, metavar="FILE",
                    help="--benchmark hpsv3: the released HPSv3.safetensors")
    add_model_flags(ev)
    add_sampler_flags(ev)
    ev.set_defaults(func=_eval)

    da = sub.add_parser("data", help="prompt sets by text-region count: stats, sample, filter; benchmark builder")
    dsub = da.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("stats", help="histogram of region counts (bins 1, 2, 3, 4, 5, >5)")
    ds.add_argument("prompts", help="JSONL file, one {\"prompt\": ...} per line (optional \"regions\" field)")
    dm = dsub.add_parser("sample", help="draw prompts matching a target region mix exactly, without replacement")
    dm.add_argument("prompts", help="JSONL prompts file")
    dm.add_argument("--target", required=True, help="BIN:WEIGHT list, e.g. 2:0.2,3:0.3,4:0.3,5:0.2")
    dm.add_argument("--n", type=int, required=True, help="prompts to draw")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--out", required=True, help="JSONL file to write")
    df = dsub.add_parser("filter", help="keep the prompts of chosen region bins")
    df.add_argument("prompts", help="JSONL prompts file")
    df.add_argument("--bins", required=True, help="bins to keep, e.g. 2,3 or 5,>5")
    df.add_argument("--out", required=True, help="JSONL file to write")
    db = dsub.add_parser("synth-cvtg", help="(re)build the synthetic CVTG-format benchmark")
    db.add_argument("--out", required=True, help="benchmark root to write (CVTG/N.json, CVTG-Style/N.json)")
    db.add_argument("--per-file", type=int, default=24, help="prompts per subset and region count")
    db.add_argument("--seed", type=int, default=0)
    db.add_argument("--render", default=None, metavar="DIR",
                    help="also save the generator's rendering of each prompt in DIR (for varrl eval --images)")
    da.set_defaults(func=_data)
    for sp_ in (pt, tr, ab, sp, ev, ds, dm, df, db):  # --debug after the command name works too
        sp_.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def debug_requested(args: argparse.Namespace) -> bool:
    """--debug on the command line, or VARRL_DEBUG set to anything but '' or '0'."""
    return bool(getattr(args, "debug", False)) or os.environ.get("VARRL_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors end in one line on stderr (exit 2: bad input, 1: the run or the
    system failed), tracebacks only with --debug or VARRL_DEBUG=1."""
    from varrl.errors import describe
    from varrl.stop import Stopped, as_stopped, sigterm_stops, watch_parent_from_env

    args = build_parser().parse_args(argv)
    watch_parent_from_env()  # a run that varrl ablate --jobs started ends with it
    try:
        with sigterm_stops():
            args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: a stop asked for, not a failure
        stop = e if isinstance(e, Stopped) else as_stopped(e, "")
        print(f"varrl {args.command}: stopped by {stop.how}" + (f"; {stop.hint}" if stop.hint else ""),
              file=sys.stderr)
        return stop.exit_code
    except Exception as e:
        if debug_requested(args):
            raise
        code, line = (2, str(e)) if isinstance(e, UsageError) else describe(e)
        print(f"varrl {args.command}: error: {line}", file=sys.stderr)
        return code
    return 0
