"""The form of the prompts a model was trained on, and a check for prompts outside it.

A small model trained on one template reads only that template: the shipped nano model renders
6-9 of 16 held-out words legibly for `the text "OPEN" in black on a white background` and none
for `a poster with the text "OPEN"`. Its model directory records the form (config.json
"prompts": templates, word case, colour names), and the policy warns once when prompts leave it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from varrl.data.synth import PALETTE, SynthConfig
from varrl.textmetrics import quoted_spans

_QUOTED = '"[^"]+"'
_WORDS = f"{_QUOTED}(?:, {_QUOTED})*(?: and {_QUOTED})?"  # how synth.quote_words joins words
_CASE_OK = {"upper": str.isupper, "lower": str.islower, "title": lambda w: w == w.title(), "mixed": lambda w: True}


@dataclass(frozen=True)
class PromptForm:
    templates: tuple[str, ...]
    """templates with {words} (quoted words joined by ', ' and ' and '), {fg} and {bg} (colour names)"""
    case: str = "mixed"
    """case of the quoted words: upper, lower, title or mixed (any)"""
    colours: tuple[str, ...] = tuple(PALETTE)

    @staticmethod
    def from_synth(cfg: SynthConfig) -> PromptForm:
        """The form of the prompts the synthetic generator makes with `cfg`."""
        return PromptForm(tuple(cfg.templates), cfg.case, tuple(PALETTE))

    @staticmethod
    def from_meta(meta: dict) -> PromptForm | None:
        """The form a model directory's config.json records ("prompts"), else the one of the
        synthetic data it says it was trained on (trained.data), else None (unknown: no check)."""
        rec = meta.get("prompts")
        if isinstance(rec, dict) and rec.get("templates"):
            return PromptForm(tuple(rec["templates"]), rec.get("case", "mixed"),
                              tuple(rec.get("colours", tuple(PALETTE))))
        data = (meta.get("trained") or {}).get("data")
        if isinstance(data, dict) and data.get("templates"):
            return PromptForm(tuple(data["templates"]), data.get("case", "mixed"), tuple(PALETTE))
        return None

    def to_dict(self) -> dict:
        return {"templates": list(self.templates), "case": self.case, "colours": list(self.colours)}

    @cached_property
    def _patterns(self) -> list[re.Pattern]:
        colour = "(?:" + "|".join(re.escape(c) for c in self.colours) + ")"
        out = []
        for t in self.templates:
            parts = re.split(r"(\{words\}|\{fg\}|\{bg\})", t)
            fields = {"{words}": _WORDS, "{fg}": colour, "{bg}": colour}
            out.append(re.compile("".join(fields.get(p, re.escape(p)) for p in parts)))
        return out

    def fits(self, prompt: str) -> bool:
        """Whether `prompt` is of this form (the empty prompt, guidance's unconditional branch, is)."""
        if not prompt:
            return True
        if not any(p.fullmatch(prompt) for p in self._patterns):
            return False
        ok = _CASE_OK.get(self.case, _CASE_OK["mixed"])
        return all(ok(w) for span in quoted_spans(prompt, ("double",)) for w in span.split() if w.isalpha())

    def example(self) -> str:
        """The first template filled in, as the warning shows it."""
        word = {"upper": "OPEN", "lower": "open", "title": "Open"}.get(self.case, "OPEN")
        fg = "black" if "black" in self.colours else self.colours[0]
        bg = "white" if "white" in self.colours else self.colours[-1]
        return self.templates[0].format(words=f'"{word}"', fg=fg, bg=bg)

    def warning(self, prompt: str) -> str:
        """One line: which prompt left the form, and what the form is."""
        shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
        others = f" (or one of {len(self.templates) - 1} other templates)" if len(self.templates) > 1 else ""
        case = f"{self.case}-case " if self.case in ("upper", "lower", "title") else ""
        return (f"the prompt {shown!r} is unlike those this model was trained on, so it may not render its text; "
                f"it was trained on prompts like {self.example()!r}{others}: {case}quoted words, colours among "
                f"{', '.join(self.colours[:4])}, ...")
