"""A small benchmark in CVTG-2K format built from the synthetic generator's held-out words.

`build_synth_cvtg(root)` writes root/CVTG/{2..5}.json and root/CVTG-Style/{2..5}.json; the same
arguments give the same files on any machine (the generator is a pure function of config, split and
index). The shipped copy, varrl/assets/bench/cvtg_synth, is the default `varrl eval --data`:

    varrl data synth-cvtg --out varrl/assets/bench/cvtg_synth

With `render=DIR` the generator's own rendering of every prompt's words is saved in the layout
`varrl eval --images` reads, so `varrl eval --images DIR` measures what OCR reads off clean text
(the ceiling a generator can reach on this benchmark).

Prompts follow CVTG: every text region is a single-quoted span tied to a carrier ("'OPEN' on a
sign"); CVTG-Style adds attributes (text and background colour). Words are upper case, the nano
model's domain, and come from the held-out split, so no model trained on the generator's train
split has seen them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from PIL import Image

from varrl.data.synth import SynthConfig, SynthGenerator
from varrl.eval.cvtg import SUBSETS
from varrl.fileio import atomic_write_text

REGIONS = (2, 3, 4, 5)
CARRIERS = ("sign", "card", "flag", "mug", "box", "tag", "cup", "van", "kite", "boat", "wall", "tent")
# The generator fills this template, so its chosen colours can be read back exactly.
_PROBE_TEMPLATE = "{fg}|{bg}|{words}"
BENCH_DATA = SynthConfig(image_size=128, case="upper", word_len=(3, 6), background="plain",
                         templates=(_PROBE_TEMPLATE,))
"""the rendering settings of the benchmark (region_mix is set per file)"""


def join_regions(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def cvtg_record(index: int, words: list[str], carriers: list[str], style: tuple[str, str] | None) -> dict:
    """One data_list entry: plain ("'OPEN' on a sign and 'FISH' on a flag") or, with style = (text
    colour, background colour), "... , in red on a white background"."""
    sentences = [f"'{w}' on a {c}" for w, c in zip(words, carriers)]
    prompt = join_regions(sentences)
    if style is not None:
        fg, bg = style
        prompt += f", in {fg} on a {bg} background"
        sentences = [f"{s} in {fg}" for s in sentences]
    return {"index": index, "prompt": prompt, "carrier_list": list(carriers), "sentence_list": sentences}


def build_synth_cvtg(root: str | Path, per_file: int = 24, seed: int = 0, max_chars: int = 127,
                     render: str | Path | None = None) -> list[Path]:
    """Write the benchmark (per_file prompts per subset and region count); prompts stay within
    max_chars characters (the nano text encoder reads 127). Returns the files written."""
    if per_file < 1:
        raise ValueError(f"per_file must be at least 1, got {per_file}")
    root = Path(root)
    written = []
    for s, subset in enumerate(SUBSETS):
        for n in REGIONS:
            cfg = replace(BENCH_DATA, region_mix={str(n): 1.0})
            gen = SynthGenerator(cfg, "heldout", seed=seed * 100 + s * 10 + n)
            records, i = [], 0
            while len(records) < per_file:
                if i > 200 * per_file:
                    raise RuntimeError(f"could not draw {per_file} {n}-region prompts within {max_chars} characters")
                sample = gen.sample(i)
                i += 1
                if sample.n_regions != n:
                    continue  # the canvas took fewer words than asked
                fg, bg, _ = sample.prompt.split("|", 2)
                # A fixed function of position: deterministic, varied, distinct within a prompt (5 and 12 coprime).
                carriers = [CARRIERS[(i * 7 + k * 5) % len(CARRIERS)] for k in range(n)]
                rec = cvtg_record(len(records), sample.words, carriers, (fg, bg) if subset == "CVTG-Style" else None)
                if len(rec["prompt"]) > max_chars:
                    continue
                records.append(rec)
                if render is not None:
                    path = Path(render) / subset / str(n) / f"{rec['index']}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(sample.image).save(path)
            path = root / subset / f"{n}.json"
            atomic_write_text(path, json.dumps({"data_list": records}, indent=1) + "\n")
            written.append(path)
    return written
