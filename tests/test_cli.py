from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from varrl import SamplerConfig, load_policy
from varrl.cli import main
from varrl.data.synth import SynthConfig

# 32 px synthetic renderings: DejaVuSans only, since at 32 px some fonts (the monospaced ones) cannot
# fit a 3-letter word at 12 px cap height, and a sample where no word fits has no prompt to build.
DATA = ["image_size=32", "cap_px=[12,14]", "word_len=[3,3]", "region_mix={'1': 1.0}", "fonts=[DejaVuSans]"]
TINY = [
    "tokenizer.image_size=32", "tokenizer.sides=[1,2,4]", "tokenizer.vocab_size=64", "tokenizer.code_dim=8",
    "tokenizer.channels=16", "tokenizer.res_blocks=1", "tokenizer.refine_channels=4",
    "model.dim=32", "model.depth=1", "model.heads=2", "model.text_depth=1", "model.max_text_len=64",
    "tokenizer_train.steps=3", "tokenizer_train.batch_size=4", "tokenizer_train.log_every=1",
    "tokenizer_train.save_every=1", "tokenizer_train.sample_every=3", "tokenizer_train.ocr_eval_images=2",
    "model_train.steps=4", "model_train.batch_size=4", "model_train.log_every=1", "model_train.save_every=2",
    "model_train.eval_every=3", "model_train.eval_prompts=2",
    "ocr_workers=0",
    *[f"data.{d}" for d in DATA], *[f"tokenizer_data.{d}" for d in DATA],
]


def _pretrain_args(run_root, name, *extra):
    return ["pretrain", f"run.dir={run_root}", f"run.name={name}", *TINY, *extra]


def _model_metrics(run_dir):
    lines = (run_dir / "model" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k != "perf/step_s"} for ln in lines]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One uninterrupted tiny pretraining run (3 tokenizer steps, 4 model steps)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(_pretrain_args(root, "full")) == 0
    return root / "full"


# --- sample -------------------------------------------------------------------------------------------

def test_sample_writes_png(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc = main(["sample", "--checkpoint", str(tiny_model_dir), "--prompt", 'the text "OPEN"', "--prompt", "b",
               "--n", "2", "--out", str(out), "--top-k", "5"])
    assert rc == 0
    assert "wrote 4 samples" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG"
        # 4 tiles of 32 px in 4 columns, 3 caption lines (40 px) under each: 4*(32+4)+4 x (32+40+4)+4
        assert im.size == (148, 80)


def test_default_cfg_follows_the_checkpoint(tiny_model_dir, tmp_path):
    """Without --cfg, sample/eval use the guidance the model is meant to sample with."""
    import argparse

    from varrl.cli import VAR_CFG, _sampler, default_cfg
    from varrl.policy.var_load import VAR_FORMAT

    assert default_cfg(None) == 0.0  # the shipped nano model reads better without guidance
    assert default_cfg(str(tiny_model_dir)) == 0.0
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "config.yaml").write_text("run:\n  name: run\nsampler:\n  cfg: 2.5\n")
    assert default_cfg(str(run)) == 2.5 and default_cfg(str(run / "last")) == 2.5
    (tmp_path / "var_d16.pth").write_bytes(b"x")
    assert default_cfg(str(tmp_path / "var_d16.pth")) == VAR_CFG == 1.5
    (tmp_path / "var_dir").mkdir()
    (tmp_path / "var_dir" / "config.json").write_text(json.dumps({"format": VAR_FORMAT}))
    assert default_cfg(str(tmp_path / "var_dir")) == VAR_CFG
    opts = dict(cfg_schedule="linear", top_k=0, top_p=0.0, temperature=1.0)
    assert _sampler(argparse.Namespace(cfg=4.0, **opts), str(run)).cfg == 4.0  # an explicit --cfg wins
    assert _sampler(argparse.Namespace(cfg=None, **opts), str(run)).cfg == 2.5


def test_sample_scale_and_cols(tiny_model_dir, tmp_path):
    out = tmp_path / "y.png"
    assert main(["sample", "--checkpoint", str(tiny_model_dir), "--prompt", "a", "--n", "3", "--out", str(out),
                 "--cols", "1", "--scale", "2", "--cfg", "0"]) == 0
    with Image.open(out) as im:
        assert im.size == (1 * (64 + 4) + 4, 3 * (64 + 40 + 4) + 4)


@pytest.mark.parametrize("prompt", ["", "   "])
def test_sample_empty_prompt_exit_2(tiny_model_dir, tmp_path, capsys, prompt):
    out = tmp_path / "x.png"
    rc = main(["sample", "--checkpoint", str(tiny_model_dir), "--prompt", prompt, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("varrl sample: error: ")
    assert "empty" in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


def test_sample_missing_checkpoint_exit_2(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    rc = main(["sample", "--checkpoint", str(missing), "--prompt", "a", "--out", str(tmp_path / "x.png")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("varrl sample: error: ") and str(missing) in err and "\n" not in err


@pytest.mark.parametrize(("args", "text"), [(["--n", "0"], "--n"), (["--top-p", "2"], "--top-p"),
                                            (["--temperature", "0"], "temperature")])
def test_sample_bad_options_exit_2(tiny_model_dir, tmp_path, capsys, args, text):
    rc = main(["sample", "--checkpoint", str(tiny_model_dir), "--prompt", "a", "--out", str(tmp_path / "x.png"),
               *args])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("varrl sample: error: ") and text in err


# --- pretrain -----------------------------------------------------------------------------------------

def test_pretrain_smoke(pretrained):
    run = pretrained
    assert (run / "config.yaml").exists()
    tok_ckpts = sorted(p.name for p in (run / "tokenizer" / "checkpoints").iterdir())
    assert tok_ckpts == ["step_00000001", "step_00000002", "step_00000003"]
    model_ckpts = sorted(p.name for p in (run / "model" / "checkpoints").iterdir())
    assert model_ckpts == ["step_00000002", "step_00000004"]
    assert (run / "tokenizer" / "samples" / "step_000003.png").exists()
    assert (run / "model" / "samples" / "step_000004.png").exists()
    meta = json.loads((run / "export" / "config.json").read_text())
    assert meta["format"] == "varrl-nano/1"
    assert meta["trained"]["tokenizer_steps"] == 3 and meta["trained"]["model_steps"] == 4
    assert meta["model"]["dim"] == 32 and meta["tokenizer"]["sides"] == [1, 2, 4]
    # the prompt form it was trained on (the default synthetic templates), for load_policy's warning
    assert meta["prompts"]["templates"] == list(SynthConfig().templates) and meta["prompts"]["case"] == "mixed"
    assert load_policy(run / "export").prompt_form.fits('a blue sign that says "abc" in red')

    metrics = _model_metrics(run)
    train_steps = [m["step"] for m in metrics if "model/loss" in m]
    assert train_steps == [1, 2, 3, 4]
    assert [m["step"] for m in metrics if "eval/word_acc" in m] == [3, 4]
    assert all(0.0 <= m["eval/word_acc"] <= 1.0 for m in metrics if "eval/word_acc" in m)
    tok_lines = [json.loads(ln) for ln in (run / "tokenizer" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in tok_lines if "tok/loss" in m] == [1, 2, 3]

    for path in (run / "export", run):  # a run dir loads its export
        policy = load_policy(path)
        traj = policy.rollout(['the text "abc"'], n=2, sampler=SamplerConfig(cfg=3.0),
                              generator=torch.Generator().manual_seed(0))
        img = policy.decode(traj)
        assert img.shape == (2, 3, 32, 32)
        assert float(img.min()) >= 0 and float(img.max()) <= 1


def test_pretrain_resume_is_bit_identical(pretrained, tmp_path, capsys):
    # Simulate a run killed after its step-2 model checkpoint: the later checkpoint and the export
    # are gone, but metrics.jsonl already holds lines past step 2.
    run = tmp_path / "killed"
    shutil.copytree(pretrained, run)
    shutil.rmtree(run / "model" / "checkpoints" / "step_00000004")
    shutil.rmtree(run / "export")
    step2 = (run / "model" / "checkpoints" / "step_00000002" / "model.safetensors").read_bytes()
    assert main(["pretrain", "--resume", str(run)]) == 0
    assert (run / "model" / "checkpoints" / "step_00000004").is_dir()
    assert "pretraining finished" in capsys.readouterr().out
    a = (pretrained / "export" / "model.safetensors").read_bytes()
    b = (run / "export" / "model.safetensors").read_bytes()
    assert a == b
    assert a != step2  # steps 3 and 4 did change the weights
    assert (pretrained / "export" / "tokenizer.safetensors").read_bytes() == \
        (run / "export" / "tokenizer.safetensors").read_bytes()
    assert _model_metrics(run) == _model_metrics(pretrained)


def test_pretrain_resume_without_checkpoint_dir(tmp_path, capsys):
    rc = main(["pretrain", "--resume", str(tmp_path / "nothing")])
    assert rc == 2
    assert "config.yaml" in capsys.readouterr().err


def test_pretrain_unknown_override(tmp_path, capsys):
    rc = main(["pretrain", f"run.dir={tmp_path}", "model_train.step=3"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("varrl pretrain: error: ")
    assert "did you mean 'model_train.steps'" in err
    assert not (tmp_path / "pretrain").exists()


def test_pretrain_bad_override_value(tmp_path, capsys):
    rc = main(["pretrain", f"run.dir={tmp_path}", "model_train.steps=many"])
    assert rc == 2
    assert "model_train.steps" in capsys.readouterr().err


def test_pretrain_twice_needs_resume(pretrained, capsys):
    rc = main(_pretrain_args(pretrained.parent, pretrained.name))
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("varrl pretrain: error: ") and "--resume" in err and str(pretrained) in err


def test_pretrain_init_from_continues_a_model_directory(pretrained, tmp_path):
    """With the run directory gone, pretraining can start again from exported weights."""
    from varrl.checkpoint import load_tensors

    export = pretrained / "export"
    args = _pretrain_args(tmp_path, "cont", f"tokenizer_train.init_from={export}", "tokenizer_train.steps=0",
                          f"model_train.init_from={export}", "model_train.steps=1")
    assert main(args) == 0
    tok_a = load_tensors(export / "tokenizer.safetensors")
    tok_b = load_tensors(tmp_path / "cont" / "export" / "tokenizer.safetensors")
    assert all(torch.equal(tok_a[k], tok_b[k]) for k in tok_a)  # zero tokenizer steps: unchanged
    model_a = load_tensors(export / "model.safetensors")
    model_b = load_tensors(tmp_path / "cont" / "export" / "model.safetensors")
    moved = [k for k in model_a if not torch.equal(model_a[k], model_b[k])]
    assert moved, "one training step from the exported weights must change them"
    # Started from the export, not from scratch: one small step stays close to it.
    assert max((model_a[k] - model_b[k]).abs().max().item() for k in model_a) < 0.05


def test_pretrain_export_writes_a_half_precision_model_dir(pretrained, tmp_path, capsys):
    from varrl.checkpoint import load_tensors

    dest = tmp_path / "exp"
    assert main(["pretrain", "--resume", str(pretrained), "--export", str(dest)]) == 0
    sd = load_tensors(dest / "model.safetensors")
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {torch.float16}
    ckpt = load_tensors(sorted((pretrained / "model" / "checkpoints").iterdir())[-1] / "model.safetensors")
    assert all(torch.equal(sd[k], ckpt[k].half()) for k in ckpt)
    policy = load_policy(dest)  # computes in float32 whatever the stored precision
    assert next(policy.model.parameters()).dtype == torch.float32
    assert main(["pretrain", "--export", str(dest)]) == 2
    assert "--export needs --resume" in capsys.readouterr().err


def test_pretrain_token_weights_mark_the_word_cells():
    from types import SimpleNamespace

    from varrl.models.tokenizer import TokenizerConfig
    from varrl.recipes.pretrain_model import token_weights

    sched = TokenizerConfig().schedule()  # 128 px, last grid 16x16 of 8 px cells
    word = SimpleNamespace(boxes=[(16, 54, 112, 74)])  # x cells 2..13, y cells 6..9
    blank = SimpleNamespace(boxes=[])  # no boxes: a full mask, as in mask propagation (uniform weights)
    w_BL = token_weights([word, blank], (128, 128), sched, 4.0)
    assert w_BL.shape == (2, sched.total_tokens)
    last_hw = w_BL[0, -256:].view(16, 16)
    on = torch.zeros(16, 16, dtype=torch.bool)
    on[5:11, 1:15] = True  # the box's cells grown by one cell
    assert torch.equal(last_hw == 4.0, on) and torch.equal(last_hw[~on], torch.ones(int((~on).sum())))
    assert w_BL[0, 0] == 4.0  # the 1x1 grid covers the word
    assert torch.equal(w_BL[1], torch.full((sched.total_tokens,), 4.0))
    assert torch.equal(token_weights([word], (128, 128), sched, 1.0), torch.ones(1, sched.total_tokens))
