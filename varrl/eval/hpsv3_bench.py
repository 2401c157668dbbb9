"""The HPSv3 image-generation benchmark: HPSv3 scores per prompt category, overall = mean of the
category means (so a large category does not outweigh a small one), a table like the paper's Table 2.

Data root layout: one folder per category, named as in CATEGORIES (underscores or dashes for the
space in "Natural Scenery" also match), holding its prompts as either
- `prompts.txt`: one prompt per non-empty line (keys 00000, 00001, ...), or
- `prompts.jsonl`: one {"prompt": ..., "id": optional key} object per line, or
- one `<key>.txt` file per prompt (the layout the HPSv3 tools read; the text is stripped).

Images live at `<images>/<Category>/<key>.png` (or .jpg/.jpeg/.webp). Generated images are saved
there with the prompt beside them as `<key>.txt`, so the HPSv3 package's own benchmark script can
read the same folder.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from varrl.eval.cvtg import BenchmarkError, EvalError

CATEGORIES = ("Characters", "Arts", "Design", "Architecture", "Animals", "Natural Scenery", "Transportation",
              "Products", "Plants", "Food", "Science", "Others")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
Generate = Callable[[list[str], int], list[np.ndarray]]
"""(prompts of batch b, b) -> one uint8 [H, W, 3] image per prompt"""


@dataclass(frozen=True)
class HpsPrompt:
    category: str  # canonical name, one of CATEGORIES
    folder: str  # the category's folder name under the data root (and under the images folder)
    key: str
    prompt: str


def category_of(folder: str) -> str | None:
    """The canonical category a folder name stands for (case, '_' and '-' ignored), or None."""
    norm = folder.replace("_", " ").replace("-", " ").strip().lower()
    return next((c for c in CATEGORIES if c.lower() == norm), None)


def _read_folder(path: Path, category: str) -> list[HpsPrompt]:
    if (path / "prompts.txt").is_file():
        lines = [ln.strip() for ln in (path / "prompts.txt").read_text(encoding="utf-8").splitlines()]
        return [HpsPrompt(category, path.name, f"{i:05d}", p) for i, p in enumerate(ln for ln in lines if ln)]
    if (path / "prompts.jsonl").is_file():
        out = []
        for n, line in enumerate((path / "prompts.jsonl").read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt = str(row["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                where = f"{path / 'prompts.jsonl'} line {n}"
                raise BenchmarkError(f"{where}: expected {{\"prompt\": ...}} ({err})") from err
            out.append(HpsPrompt(category, path.name, str(row.get("id", f"{len(out):05d}")), prompt))
        return out
    return [HpsPrompt(category, path.name, f.stem, f.read_text(encoding="utf-8").strip())
            for f in sorted(path.glob("*.txt"))]


def read_hpsv3_prompts(root: str | Path) -> list[HpsPrompt]:
    """Every prompt of the benchmark, category by category in CATEGORIES order."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"HPSv3 benchmark root not found: {root}")
    found: dict[str, Path] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        cat = category_of(d.name)
        if cat is None:
            raise BenchmarkError(f"{d}: not an HPSv3 category folder; expected folders named {', '.join(CATEGORIES)}")
        if cat in found:
            raise BenchmarkError(f"{found[cat]} and {d} both stand for category {cat!r}")
        found[cat] = d
    prompts = [p for cat in CATEGORIES if cat in found for p in _read_folder(found[cat], cat)]
    if not prompts:
        raise BenchmarkError(f"no prompts under {root}: expected one folder per category ({', '.join(CATEGORIES)}) "
                             "holding prompts.txt, prompts.jsonl or one <key>.txt per prompt")
    return prompts


def limit_per_category(prompts: list[HpsPrompt], limit: int) -> list[HpsPrompt]:
    """The first `limit` prompts of every category (all when limit is 0)."""
    if limit <= 0:
        return list(prompts)
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        seen[p.category] = seen.get(p.category, 0) + 1
        if seen[p.category] <= limit:
            out.append(p)
    return out


def summarize(categories: list[str], scores: list[float]) -> dict:
    """{"overall": mean of the category means, "by_category": {cat: {count, mean, std}}} over the
    categories present, in CATEGORIES order."""
    by: dict[str, list[float]] = {}
    for c, s in zip(categories, scores):
        by.setdefault(c, []).append(float(s))
    stats = {c: {"count": len(by[c]), "mean": float(np.mean(by[c])), "std": float(np.std(by[c]))}
             for c in CATEGORIES if c in by}
    overall = float(np.mean([s["mean"] for s in stats.values()])) if stats else None
    return {"overall": overall, "by_category": stats}


def markdown_table(metrics: dict, name: str = "model") -> str:
    """One row in the layout of the paper's Table 2: Overall, then the twelve categories."""
    cells = [name, "-" if metrics["overall"] is None else f"{metrics['overall']:.2f}"]
    by = metrics["by_category"]
    cells += [f"{by[c]['mean']:.2f}" if c in by else "-" for c in CATEGORIES]
    head = ["Model", "Overall", *CATEGORIES]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(cells) + " |"]) + "\n"


def find_image(images_dir: Path, p: HpsPrompt) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        path = images_dir / p.folder / f"{p.key}{suffix}"
        if path.is_file():
            return path
    return None


def policy_generator(policy, sampler, seed: int) -> Generate:
    """Images from a varrl policy: batch b draws its noise from seed * 1_000_003 + b (as `varrl eval`
    does for CVTG); prompts the policy's text encoder cannot take are shortened (runner.fit_prompt)."""
    import torch

    from varrl.eval.runner import fit_prompt
    from varrl.viz import to_uint8

    def generate(prompts: list[str], b: int) -> list[np.ndarray]:
        fitted = [fit_prompt(p, policy.check_prompts) for p in prompts] if hasattr(policy, "check_prompts") else prompts
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        with torch.no_grad():
            traj = policy.rollout(fitted, n=1, sampler=sampler, generator=gen)
            return list(to_uint8(policy.decode(traj)))

    return generate


def _batches(source, prompts: list[HpsPrompt], out_dir: Path, batch: int, missing: list, unreadable: list):
    """(prompts, images) per batch, generated (and saved with their prompt) or read from a folder."""
    from PIL import Image

    from varrl.eval.runner import read_image

    if callable(source):
        for b, i in enumerate(range(0, len(prompts), batch)):
            chunk = prompts[i: i + batch]
            images = source([p.prompt for p in chunk], b)
            for p, img in zip(chunk, images):
                (out_dir / p.folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(out_dir / p.folder / f"{p.key}.png")
                (out_dir / p.folder / f"{p.key}.txt").write_text(p.prompt, encoding="utf-8")
            yield chunk, images
        return
    images_dir = Path(source)
    if not images_dir.is_dir():
        raise EvalError(f"images folder not found: {images_dir}")
    chunk, images = [], []
    for p in prompts:
        path = find_image(images_dir, p)
        if path is None:
            missing.append(f"{p.folder}/{p.key}")
            continue
        try:
            images.append(read_image(path))
        except (OSError, ValueError, Image.DecompressionBombError):
            unreadable.append(f"{p.folder}/{p.key}")
            continue
        chunk.append(p)
        if len(chunk) == batch:
            yield chunk, images
            chunk, images = [], []
    if chunk:
        yield chunk, images


def run_hpsv3_benchmark(source: Generate | str | Path, data_root: str | Path, out_dir: str | Path, scorer, *,
                        limit: int = 0, batch: int = 8, name: str = "model") -> dict:
    """Score one image per benchmark prompt with `scorer` (anything with `.score(images, prompts)`,
    e.g. varrl.rewards.hpsv3.HpsV3Scorer) and write OUT/metrics.json, OUT/metrics.md and OUT/scores.jsonl.

    source: a Generate callable (see `policy_generator`), whose images are saved under OUT, or a folder
    of existing images from any generator; missing or unreadable images are reported and skipped."""
    from tqdm import tqdm

    prompts = limit_per_category(read_hpsv3_prompts(data_root), limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing: list[str] = []
    unreadable: list[str] = []
    rows = []
    with tqdm(total=len(prompts), desc="hpsv3", unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        for chunk, images in _batches(source, prompts, out, batch, missing, unreadable):
            for p, s in zip(chunk, scorer.score(images, [p.prompt for p in chunk])):
                rows.append({"category": p.category, "key": p.key, "prompt": p.prompt, "hpsv3": float(s)})
            bar.update(len(chunk))
    for what, keys in (("missing", missing), ("unreadable", unreadable)):
        if keys:
            print(f"varrl eval: warning: {len(keys)} of {len(prompts)} images {what} ({', '.join(keys[:5])}"
                  f"{', ...' if len(keys) > 5 else ''}); left out of the scores", file=sys.stderr)
    if not rows:
        raise EvalError(f"no image could be scored ({len(missing)} missing, {len(unreadable)} unreadable)")
    metrics = summarize([r["category"] for r in rows], [r["hpsv3"] for r in rows])
    metrics.update({"benchmark": "hpsv3", "data": str(data_root), "source": name, "prompts": len(prompts),
                    "scored": len(rows), "missing": missing, "unreadable": unreadable})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "metrics.md").write_text(f"# HPSv3 benchmark of {name}\n\n{len(rows)} of {len(prompts)} images scored "
                                  f"(overall = mean of the category means)\n\n{markdown_table(metrics, name)}")
    with open(out / "scores.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return metrics
