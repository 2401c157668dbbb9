"""Credit assignment of one update: from a batch's returns (gathered over ranks) to the advantage
of every trained token. Plain GRPO and the VMR stages give one advantage per sample; per-scale VMR
gives one per segment of grids; region credit one per token (the word whose box holds it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from varrl.algorithms.grpo import group_advantages
from varrl.algorithms.per_scale import per_scale_advantages, step_advantages
from varrl.algorithms.region_credit import token_advantages, word_advantages
from varrl.trainer.batches import StageBatch
from varrl.trainer.config import RlConfig


@dataclass
class Advantages:
    """One update's advantages: per sample, and where credit is finer than the sample, per token."""

    sample_B: torch.Tensor  # [B] the image's own advantage
    steps: list[torch.Tensor] | None = None  # per trained step (batch.steps order): [B, n_t]; None: sample_B

    def select(self, rows: torch.Tensor) -> Advantages:
        return Advantages(self.sample_B[rows], None if self.steps is None else [a[rows] for a in self.steps])


@dataclass
class CreditInputs:
    """What one rank contributes to the batch-wide advantage statistics (rows in batch order)."""

    returns: torch.Tensor  # [B]
    group: torch.Tensor  # [B]
    values: torch.Tensor | None  # per_scale: [B, J] soft values at the splits
    word_scores: list[list[float]] | None  # region credit: per row, its regions' own scores

    @staticmethod
    def of(batch: StageBatch, rl: RlConfig) -> CreditInputs:
        scores = None
        if rl.region_credit.enabled and batch.words is not None:
            scores = [[r.score for r in row] for row in regions(batch, rl)]
        return CreditInputs(batch.returns, batch.traj.group, batch.values, scores)


def regions(batch: StageBatch, rl: RlConfig) -> list[list]:
    """Per row, the WordScores region credit works with: its words, or every letter of every word in
    order (rl.region_credit.unit). Rows of one group ask for the same words, so position i is the
    same region in each of them."""
    if rl.region_credit.unit == "letter":
        return [[c for w in row for c in w.letters] for row in batch.words]
    return batch.words


def advantages(parts: list[CreditInputs], rank: int, batch: StageBatch, rl: RlConfig, grids) -> Advantages:
    """This rank's advantages, normalised over the batch of every rank (`parts`, one per rank)."""
    returns = torch.cat([p.returns for p in parts])
    group = torch.cat([p.group for p in parts])
    lo = sum(len(p.returns) for p in parts[:rank])
    mine = slice(lo, lo + len(parts[rank].returns))
    adv_B = group_advantages(returns, group, rl.adv_norm, clip=rl.adv_clip, std_floor=rl.adv_std_floor)[mine].float()
    if parts[rank].values is not None:
        values = torch.cat([p.values for p in parts])
        adv_BS = per_scale_advantages(values, returns, group, rl.adv_norm, rl.adv_clip, rl.adv_std_floor)[mine].float()
        per_step = step_advantages(adv_BS, batch.segments, batch.steps)
        return Advantages(adv_B, [a[:, None].expand(-1, grids[t][0] * grids[t][1])
                                  for a, t in zip(per_step, batch.steps)])
    if parts[rank].word_scores is not None:
        scores = [row for p in parts for row in p.word_scores]
        word_adv = word_advantages(scores, group, rl.adv_norm, rl.adv_clip, rl.adv_std_floor)[mine]
        mp = rl.mp
        steps = token_advantages(word_adv, [[r.boxes for r in row] for row in regions(batch, rl)], adv_B,
                                 tuple(batch.images.shape[1:3]), list(grids), batch.steps, mp.pool, mp.threshold,
                                 mp.dilation, rl.region_credit.outside)
        return Advantages(adv_B, steps)
    return Advantages(adv_B)
