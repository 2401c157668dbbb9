"""The prompt form a model directory records, and the one-line warning for prompts outside it."""

from __future__ import annotations

import json

import pytest
import torch
from tinymodel import build_tiny, write_model_dir
from tinyrun import run_args

from varrl import SamplerConfig, load_policy
from varrl.cli import main
from varrl.data.prompt_form import PromptForm
from varrl.eval.synthbench import build_synth_cvtg
from varrl.policy.load import save_policy

NANO = PromptForm(("the text {words} in {fg} on a {bg} background",), "upper", ("black", "white", "red"))
README_FORM = 'the text "OPEN" in black on a white background'


@pytest.mark.parametrize("prompt, fits", [
    (README_FORM, True),
    ('the text "OPEN" and "CAFE" in red on a white background', True),
    ('the text "A", "BC" and "DEF" in red on a black background', True),
    ("", True),  # guidance's unconditional prompt
    ('a poster with the text "OPEN"', False),  # another template: the nano model renders 0 of 16 words
    ('the text "open" in black on a white background', False),  # trained on upper case only
    ('the text "OPEN" in teal on a white background', False),  # a colour it never saw
    ('the text OPEN in black on a white background', False),  # unquoted
    ('the text "OPEN" in black on a white background, photo', False),
])
def test_fits_the_template_case_and_colours(prompt, fits):
    assert NANO.fits(prompt) is fits


def test_mixed_case_form_takes_any_case():
    assert PromptForm(NANO.templates, "mixed", NANO.colours).fits('the text "oPeN" in red on a white background')


def test_warning_is_one_line_naming_the_prompt_and_the_expected_form():
    w = NANO.warning('a poster with the text "OPEN"')
    assert "\n" not in w and 'a poster with the text "OPEN"' in w and README_FORM in w and "upper-case" in w


def test_form_from_the_model_directory_meta():
    assert PromptForm.from_meta({"prompts": NANO.to_dict()}) == NANO
    trained = {"trained": {"data": {"templates": list(NANO.templates), "case": "upper"}}}  # older exports
    assert PromptForm.from_meta(trained).templates == NANO.templates
    assert PromptForm.from_meta({"format": "varrl-nano/1"}) is None  # unknown: no check, no warning


def test_the_shipped_model_records_its_form_and_the_readme_prompt_fits():
    form = load_policy().prompt_form
    assert form is not None and form.example() == README_FORM and form.case == "upper"
    meta = json.loads((load_policy.__globals__["shipped_model_dir"]() / "config.json").read_text())
    assert meta["prompts"]["templates"] == ["the text {words} in {fg} on a {bg} background"]


# --- warned once, by the policy and by each command -----------------------------------------------------

@pytest.fixture(scope="module")
def formed_dir(tmp_path_factory):
    """A tiny model directory that records the nano prompt form."""
    path = tmp_path_factory.mktemp("formed") / "model"
    write_model_dir(path, *build_tiny(model_kwargs=dict(max_text_len=128)))
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, "prompts": NANO.to_dict()}))
    return path


def warnings_in(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "unlike those this model was trained on" in ln]


def test_load_policy_warns_once_per_policy(formed_dir, capsys):
    policy = load_policy(formed_dir)
    g = torch.Generator().manual_seed(0)
    policy.rollout([README_FORM], n=1, sampler=SamplerConfig(), generator=g)
    assert warnings_in(capsys.readouterr().err) == []
    for _ in range(2):
        policy.rollout(['a poster with the text "OPEN"'], n=1, sampler=SamplerConfig(), generator=g)
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and README_FORM in lines[0]


def test_save_policy_keeps_the_form(formed_dir, tmp_path):
    save_policy(load_policy(formed_dir), tmp_path / "copy")
    assert load_policy(tmp_path / "copy").prompt_form == NANO


@pytest.mark.parametrize("prompt, warned", [(README_FORM, 0), ('a poster with the text "OPEN"', 1)])
def test_varrl_sample_warns_once(formed_dir, tmp_path, capsys, prompt, warned):
    rc = main(["sample", "--checkpoint", str(formed_dir), "--prompt", prompt, "--prompt", prompt, "--n", "2",
               "--out", str(tmp_path / "s.png")])
    assert rc == 0 and len(warnings_in(capsys.readouterr().err)) == warned


def test_varrl_train_warns_once_at_the_start(formed_dir, tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": f'a poster with the text "{w}"'}) + "\n" for w in ("OPEN", "SHUT")))
    args = ["train", *run_args(formed_dir, tmp_path, "r", f"data.prompts_file={f}", f"data.eval_prompts_file={f}",
                               "train.group_size=2", "train.steps=2", "train.micro_batch=4")]
    assert main(args) == 0
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and README_FORM in lines[0]
    assert "unlike those this model was trained on" in (tmp_path / "r" / "report.md").read_text()


def test_varrl_eval_warns_once(formed_dir, tmp_path, capsys):
    bench = tmp_path / "bench"
    build_synth_cvtg(bench, per_file=1, seed=3)  # CVTG-style prompts: not the nano template
    rc = main(["eval", "--checkpoint", str(formed_dir), "--data", str(bench), "--limit", "4", "--batch", "2",
               "--ocr-workers", "0", "--out", str(tmp_path / "ev")])
    assert rc == 0 and len(warnings_in(capsys.readouterr().err)) == 1
