"""Prompt sets shaped by text-region count: histograms, exact target mixes, bin filters.

A record's region count is its `regions` field when it has one, else the number of quoted spans in
its prompt (any quote style, see varrl.textmetrics). Counts fall into the bins of the paper,
1, 2, 3, 4, 5 and >5 (and 0 for prompts without text). Files are JSONL, one
`{"prompt": ..., ...}` object per line, the format `data.prompts_file` reads (varrl.data.prompts);
records are written back unchanged. A CVTG-format benchmark root is read too (varrl.eval.cvtg).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from varrl.data.prompts import JsonlPrompts, PromptFileError
from varrl.data.synth import REGION_BINS
from varrl.textmetrics import quoted_spans

BINS = ("0", *REGION_BINS)
"""all bins, in order: '0' (no text), '1'..'5', '>5'"""


class RegionMixError(ValueError):
    """A target mix or bin list that cannot be met or parsed."""


def region_count(record: dict) -> int:
    """The `regions` field when present, else the number of quoted spans of the prompt."""
    n = record.get("regions")
    if n is None:
        return len(quoted_spans(record["prompt"]))
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise PromptFileError(f'"regions" must be a non-negative integer, got {n!r} in {record["prompt"][:60]!r}')
    return n


def region_bin(n: int) -> str:
    return str(n) if n <= 5 else ">5"


def read_records(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL prompts file, validated by the trainer's own reader; a folder is
    read as a CVTG-format benchmark root (records carry its region count, subset and index)."""
    if Path(path).is_dir():
        from varrl.eval.cvtg import read_cvtg

        return [{"prompt": it.prompt, "regions": it.regions, "subset": it.subset, "index": it.index}
                for it in read_cvtg(path)]
    JsonlPrompts(path)  # one clear error per bad line, the same the trainer would give
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write_records(records: list[dict], path: str | Path) -> Path:
    """Write records as JSONL through a temporary file and a rename: `path` may be the file they were
    read from, and a failed write must leave it whole."""
    from varrl.fileio import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def histogram(records: list[dict]) -> dict[str, int]:
    """Records per bin, every bin of BINS present (zeros included)."""
    counts = dict.fromkeys(BINS, 0)
    for r in records:
        counts[region_bin(region_count(r))] += 1
    return counts


def format_histogram(counts: dict[str, int]) -> str:
    """A small text table: bin, count, share; bin '0' only when it holds records."""
    total = sum(counts.values())
    lines = [f"{'regions':>8} {'prompts':>8} {'share':>7}"]
    for b, c in counts.items():
        if b == "0" and c == 0:
            continue
        lines.append(f"{b:>8} {c:>8} {c / total if total else 0.0:>7.1%}")
    lines.append(f"{'total':>8} {total:>8}")
    return "\n".join(lines)


def _check_bin(b: str, where: str) -> str:
    b = b.strip()
    if b not in BINS:
        raise RegionMixError(f"unknown region bin {b!r} in {where}; bins are {', '.join(BINS)}")
    return b


def parse_bins(text: str) -> list[str]:
    """'2,3,>5' -> ['2', '3', '>5']."""
    bins = [_check_bin(b, "--bins") for b in text.split(",") if b.strip()]
    if not bins:
        raise RegionMixError("--bins is empty: give bins like 2,3,4,5")
    return bins


def parse_target(text: str) -> dict[str, float]:
    """'2:0.2,3:0.3,4:0.3,5:0.2' -> {'2': 0.2, ...}; weights are normalised to sum 1."""
    target: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        b, sep, w = part.rpartition(":")
        if not sep:
            raise RegionMixError(f"bad --target entry {part!r}: expected BIN:WEIGHT, e.g. 2:0.2,3:0.3,4:0.3,5:0.2")
        b = _check_bin(b, "--target")
        try:
            weight = float(w)
        except ValueError:
            raise RegionMixError(f"bad weight {w!r} for bin {b} in --target: expected a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise RegionMixError(f"weight of bin {b} must be a finite number >= 0, got {w}")
        if b in target:
            raise RegionMixError(f"bin {b} appears twice in --target")
        target[b] = weight
    total = sum(target.values())
    if total <= 0:
        raise RegionMixError("--target needs a positive total weight, e.g. 2:0.2,3:0.3,4:0.3,5:0.2")
    return {b: w / total for b, w in target.items()}


def largest_remainder(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to n, each the floor of n*share plus one for the largest remainders
    (ties go to the bin listed first)."""
    quotas = {b: n * s for b, s in shares.items()}
    counts = {b: math.floor(q + 1e-9) for b, q in quotas.items()}
    left = n - sum(counts.values())
    order = sorted(shares, key=lambda b: -(quotas[b] - counts[b]))  # stable sort keeps listed order on ties
    for b in order[:left]:
        counts[b] += 1
    return counts


def sample_mix(records: list[dict], target: dict[str, float], n: int, seed: int) -> list[dict]:
    """n records, without replacement, whose bin counts are largest_remainder(n, target) exactly;
    shuffled (seeded) so that any prefix is mixed too."""
    if n < 1:
        raise RegionMixError(f"--n must be at least 1, got {n}")
    by_bin: dict[str, list[dict]] = {b: [] for b in BINS}
    for r in records:
        by_bin[region_bin(region_count(r))].append(r)
    want = largest_remainder(n, target)
    short = [b for b, k in want.items() if k > len(by_bin[b])]
    if short:
        b = short[0]
        fits = next((m for m in range(n - 1, 0, -1)
                     if all(k <= len(by_bin[c]) for c, k in largest_remainder(m, target).items())), 0)
        raise RegionMixError(f"bin {b} needs {want[b]} prompts for --n {n} but the file has only {len(by_bin[b])}"
                             + (f"; the largest --n this mix allows is {fits}" if fits else "")
                             + " (or change --target)")
    rng = random.Random(seed)
    out: list[dict] = []
    for b, k in want.items():
        out += rng.sample(by_bin[b], k)
    rng.shuffle(out)
    return out


def filter_bins(records: list[dict], bins: list[str]) -> list[dict]:
    """The records whose bin is among `bins`, in file order."""
    keep = set(bins)
    chosen = [r for r in records if region_bin(region_count(r)) in keep]
    if records and not chosen:
        have = ", ".join(b for b, c in histogram(records).items() if c)
        raise RegionMixError(f"no prompt falls in bins {', '.join(bins)} (the prompts are in bins {have}); "
                             "nothing was written: choose other --bins")
    return chosen
