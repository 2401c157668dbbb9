"""The CVTG-2K benchmark (TextCrafter, arXiv 2503.23461): its file format, target words and metrics.

A benchmark root holds `CVTG/` and `CVTG-Style/` (the published zip spells the second `CVTG-style`;
either is accepted), each with `N.json` for N text regions (2..5) =
`{"data_list": [{"index", "prompt", "carrier_list", "sentence_list"}, ...]}`. Images of a generator
live at `IMAGES/{subset}/{N}/{index}.png`, the layout other CVTG tools use.

Metrics (TextCrafter's protocol), pooled over target words, so a 5-region prompt weighs more:
- word accuracy: share of target words found among the OCR'd words (exact token, case-insensitive);
- NED: per target word 1 - Levenshtein / max length against its closest OCR'd word, averaged;
- CLIPScore: 2.5 * max(cos(image, "A photo depicts " + prompt), 0), averaged over images.
Target words are the single-quoted spans of the prompt, lower-cased, split on whitespace (the
apostrophe rule is in varrl.textmetrics).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from varrl.textmetrics import SINGLE_QUOTES, WordStats, quoted_words

SUBSETS = ("CVTG", "CVTG-Style")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class BenchmarkError(ValueError):
    """A benchmark root or image folder that cannot be read as documented."""


class EvalError(ValueError):
    """Bad `varrl eval` arguments, or nothing that could be scored."""


@dataclass(frozen=True)
class CvtgItem:
    subset: str
    """'CVTG' or 'CVTG-Style'"""
    regions: int
    """number of text regions (the N of N.json)"""
    index: int | str
    prompt: str
    carriers: tuple[str, ...] = ()
    sentences: tuple[str, ...] = ()

    @property
    def words(self) -> list[str]:
        """Target words: the single-quoted spans of the prompt, lower-cased, split on whitespace."""
        return quoted_words(self.prompt, SINGLE_QUOTES)

    @property
    def key(self) -> str:
        """Image path relative to an images folder, without suffix: '{subset}/{N}/{index}'."""
        return f"{self.subset}/{self.regions}/{self.index}"


def find_subset_dir(root: Path, subset: str) -> Path | None:
    """`root/subset`, matched case-insensitively (the published zip has 'CVTG-style')."""
    exact = root / subset
    if exact.is_dir():
        return exact
    if not root.is_dir():
        return None
    return next((p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() == subset.lower()), None)


def read_cvtg(root: str | Path) -> list[CvtgItem]:
    """Every prompt of a CVTG-format root, ordered by subset, region count and file order."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"benchmark root not found: {root} (expected a folder with CVTG/ and CVTG-Style/)")
    items: list[CvtgItem] = []
    for subset in SUBSETS:
        sub = find_subset_dir(root, subset)
        if sub is None:
            continue
        files = sorted((p for p in sub.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem))
        for path in files:
            items += _read_file(path, subset, int(path.stem))
    if not items:
        raise BenchmarkError(f"{root} holds no CVTG prompts: expected {SUBSETS[0]}/N.json or {SUBSETS[1]}/N.json "
                             'files (N = regions) of the form {"data_list": [{"index": 0, "prompt": "..."}, ...]}')
    return items


def _read_file(path: Path, subset: str, regions: int) -> list[CvtgItem]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: not valid JSON ({e})") from e
    data = obj.get("data_list") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise BenchmarkError(f'{path}: expected an object with a list "data_list"')
    out, seen = [], set()
    for pos, rec in enumerate(data):
        where = f"{path}: data_list[{pos}]"
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise BenchmarkError(f'{where} needs a non-empty string "prompt"')
        index = rec.get("index", pos)
        plain_name = isinstance(index, str) and index.strip() == index and index and "/" not in index
        if not (plain_name or (isinstance(index, int) and not isinstance(index, bool))):
            # the index names the image file, {index}.png
            raise BenchmarkError(f'{where}: "index" must be an integer or a plain file name, got {index!r}')
        if str(index) in seen:
            raise BenchmarkError(f"{where}: index {index!r} appears twice in the file")
        seen.add(str(index))
        out.append(CvtgItem(subset, regions, index, rec["prompt"], tuple(rec.get("carrier_list") or ()),
                            tuple(rec.get("sentence_list") or ())))
    return out


def interleave(items: list[CvtgItem], limit: int | None = None) -> list[CvtgItem]:
    """Round-robin over the benchmark's files, each in file order: the first `limit` items cover
    every subset and region count as evenly as possible (deterministic)."""
    groups: dict[tuple[str, int], list[CvtgItem]] = {}
    for it in items:
        groups.setdefault((it.subset, it.regions), []).append(it)
    out: list[CvtgItem] = []
    lists = list(groups.values())
    for i in range(max((len(g) for g in lists), default=0)):
        out += [g[i] for g in lists if i < len(g)]
    return out if limit is None else out[:limit]


def find_image(images_dir: Path, item: CvtgItem) -> Path | None:
    """The image of `item` under images_dir (any suffix of IMAGE_SUFFIXES, subset name case-insensitive)."""
    sub = find_subset_dir(images_dir, item.subset)
    if sub is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        for s in (suffix, suffix.upper()):
            p = sub / str(item.regions) / f"{item.index}{s}"
            if p.is_file():
                return p
    return None


@dataclass
class ItemScore:
    item: CvtgItem
    words: WordStats
    reads: list[str] = field(default_factory=list)
    clip: float | None = None


def _group(scores: list[ItemScore], clip_available: bool) -> dict:
    total = sum((s.words for s in scores), WordStats())
    clips = [s.clip for s in scores if s.clip is not None and math.isfinite(s.clip)]
    return {
        "word_acc": total.word_acc,
        "ned": total.ned,
        "clip_score": (sum(clips) / len(clips)) if clip_available and clips else None,
        "images": len(scores),
        "words": total.n,
    }


def aggregate(scores: list[ItemScore], clip_available: bool) -> dict:
    """{"overall": {...}, "by_regions": {"2": {...}, ...}, "by_subset": {"CVTG": {...}, ...}}; each group
    holds word_acc and ned pooled over its target words, clip_score (mean over images, or None) and
    the counts of images and words."""
    regions = sorted({s.item.regions for s in scores})
    subsets = [name for name in SUBSETS if any(s.item.subset == name for s in scores)]
    return {
        "overall": _group(scores, clip_available),
        "by_regions": {str(n): _group([s for s in scores if s.item.regions == n], clip_available) for n in regions},
        "by_subset": {name: _group([s for s in scores if s.item.subset == name], clip_available) for name in subsets},
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def markdown_table(metrics: dict) -> str:
    """One row per group (overall, each region count, each subset): word acc, NED, CLIPScore, counts."""
    rows = [("overall", metrics["overall"])]
    rows += [(f"{n} regions", g) for n, g in metrics["by_regions"].items()]
    rows += [(name, g) for name, g in metrics["by_subset"].items()]
    lines = ["| group | word acc | NED | CLIPScore | images | words |", "|---|---|---|---|---|---|"]
    for name, g in rows:
        lines.append(f"| {name} | {_fmt(g['word_acc'])} | {_fmt(g['ned'])} | {_fmt(g['clip_score'])} | "
                     f"{g['images']} | {g['words']} |")
    return "\n".join(lines) + "\n"
