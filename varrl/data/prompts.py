"""Prompt sources for RL: records with the words to render, from the synthetic generator or a JSONL file.

A source is indexable by an ever-growing integer (the data position): step s of a run uses records
s*P .. s*P+P-1, so the position is just the step and resume needs nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from varrl.data.synth import SynthConfig, SynthGenerator
from varrl.textmetrics import quoted_words


class PromptFileError(ValueError):
    pass


@dataclass(frozen=True)
class PromptRecord:
    prompt: str
    words: tuple[str, ...]
    """the words the image must show (lower-cased); default: the quoted spans of the prompt"""
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    def reward_meta(self) -> dict:
        return {**self.meta, "words": list(self.words)}


class SynthPrompts:
    """Prompts of the synthetic generator's `split` ("train" or "heldout": disjoint word lists)."""

    def __init__(self, config: SynthConfig, split: str, seed: int):
        self._gen = SynthGenerator(config, split, seed)

    def __getitem__(self, index: int) -> PromptRecord:
        s = self._gen.sample(index)
        return PromptRecord(s.prompt, tuple(w.lower() for w in s.words), {"regions": len(s.words)})

    def __len__(self) -> int:
        return 2**62  # unbounded: every index is a new sample


class ClassPrompts:
    """Class labels for class-conditional models: each pass over `labels` goes in its own seeded
    order. A record's prompt is the label as digits ("207"), its meta {"label": 207}; no words."""

    def __init__(self, labels: list[int], seed: int, where: str = "data.classes"):
        if not labels:
            raise PromptFileError(f"{where} is empty: give at least one class label, e.g. {where}=[207, 360]")
        bad = [x for x in labels if isinstance(x, bool) or not isinstance(x, int) or x < 0]
        if bad:
            raise PromptFileError(f"{where} must hold class labels (integers >= 0), got {bad[:3]}")
        self.labels, self.seed, self.where = list(labels), seed, where

    def __getitem__(self, index: int) -> PromptRecord:
        n = len(self.labels)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + index // n))
        label = self.labels[int(order[index % n])]
        return PromptRecord(str(label), (), {"label": label})

    def check(self, check_prompt) -> None:
        """Run check_prompt(prompt) on every label; its ValueError comes back naming the config key."""
        for label in self.labels:
            try:
                check_prompt(str(label))
            except ValueError as e:
                raise PromptFileError(f"{self.where}: {e}") from e

    def __len__(self) -> int:
        return len(self.labels)


class JsonlPrompts:
    """One JSON object per line: {"prompt": str, "words": [str, ...] (optional), ...}; other keys are
    kept as metadata. Indices past the end wrap around (epochs over the file).

    `normalize` maps text to what the model reads (the policy's `prompt_text`, e.g. accents dropped);
    the target words go through it too, so a model that renders exactly what it was asked for scores
    as correct. `warnings` lists lines whose "words" name a word the prompt does not contain;
    `no_targets` the lines that ask for no words at all (a text reward cannot score them)."""

    def __init__(self, path: str | Path, normalize: Callable[[str], str] | None = None):
        self.path = Path(path)
        self.records: list[PromptRecord] = []
        self.lines: list[int] = []  # the file line of each record, for error messages
        self.warnings: list[str] = []
        self.no_targets: list[int] = []
        for lineno, line in enumerate(read_text_file(self.path, "prompts file").splitlines(), 1):
            if line.strip():
                where = f"{self.path}:{lineno}"
                rec, missing = _parse_line(line, where, normalize or (lambda s: s))
                self.records.append(rec)
                self.lines.append(lineno)
                if not rec.words:
                    self.no_targets.append(lineno)
                if missing:
                    self.warnings.append(f"{where}: \"words\" names {', '.join(map(repr, missing))}, which the prompt "
                                         "does not contain; the model is rewarded for text it was not asked for")
        if not self.records:
            raise PromptFileError(f"{self.path} holds no prompts (expected one JSON object per line)")

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index % len(self.records)]

    def check(self, check_prompt) -> None:
        """Run check_prompt(prompt) on every record; its ValueError comes back naming file and line."""
        for rec, lineno in zip(self.records, self.lines):
            try:
                check_prompt(rec.prompt)
            except ValueError as e:
                raise PromptFileError(f"{self.path}:{lineno}: {e}") from e

    def __len__(self) -> int:
        return len(self.records)


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of `path`, or a PromptFileError naming it: missing, a folder, unreadable, not UTF-8."""
    if not path.exists():
        raise PromptFileError(f"{what} not found: {path}")
    if path.is_dir():
        raise PromptFileError(f"{what} {path} is a folder; give a JSONL file (one {{\"prompt\": ...}} per line)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PromptFileError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PromptFileError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                              "save the file as UTF-8") from None


def _parse_line(line: str, where: str, normalize: Callable[[str], str]) -> tuple[PromptRecord, list[str]]:
    """The record of one line, and the words of its "words" field that its prompt does not contain."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                              'expected one object per line like {"prompt": "a sign that says \\"OPEN\\""}') from e
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
        raise PromptFileError(f'{where}: each line needs a non-empty string field "prompt"')
    words = obj.get("words")
    if words is None:
        words = quoted_words(obj["prompt"])
    elif not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
        raise PromptFileError(f'{where}: "words" must be a list of strings')
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "words")}
    rec = PromptRecord(obj["prompt"], tuple(normalize(w).lower() for part in words for w in part.split()), meta)
    if "words" not in obj:
        return rec, []
    text = normalize(obj["prompt"]).lower()  # as the model reads it
    return rec, [w for w in rec.words if w not in text]
