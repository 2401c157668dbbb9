"""The typed config of `varrl train`: every default lives here, and unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from varrl.config import RunConfig
from varrl.config_checks import Range, at_least, check_device_name, check_ranges, positive, seed_range
from varrl.config_types import FieldError
from varrl.data.synth import SynthConfig
from varrl.policy.lora import LoraConfig
from varrl.policy.sampler import SamplerConfig
from varrl.rewards import RewardConfig


def nano_text_data() -> SynthConfig:
    """The distribution the shipped nano model was pretrained on last (configs/pretrain_nano_cells4.yaml, as phase 5):
    one or two upper-case words of 3-6 letters (half each), word i of n on row i of n, one character
    per 16 px cell from the left, monospace bold at 20 px capitals, plain background, one prompt
    template."""
    return SynthConfig(case="upper", word_len=(3, 6), fonts=("DejaVuSansMono-Bold",), background="plain",
                       region_mix={"1": 0.5, "2": 0.5}, cap_px=(20, 20), layout="cells", cell_px=16,
                       templates=("the text {words} in {fg} on a {bg} background",))


def nano_sampler() -> SamplerConfig:
    """Rollout sampling for the shipped nano model: no classifier-free guidance, temperature 0.7,
    and the paper's truncation (top-k 2, top-p 0.9). It reads better without guidance
    (benchmarks/ocr_nano.py, 64 held-out prompts: word accuracy 0.660 at cfg 0, 0.489 at cfg 3),
    better sharper (benchmarks/eval_noise.py: held-out reward 1.66 at temperature 0.7 against 1.54
    at 1) and best truncated as well (1.702 held-out, the best sampler setting measured; GRPO with
    it ends highest of all configurations, README). `sampling` log-probs are those of the tempered,
    truncated distribution the rollouts were drawn from, so the update stays on-policy and a token
    alone in its set carries no gradient. Published VAR checkpoints want guidance: set sampler.cfg."""
    return SamplerConfig(cfg=0.0, temperature=0.7, top_k=2, top_p=0.9, logprob_mode="sampling")


@dataclass
class PolicyConfig:
    path: str | None = None
    """model directory to start from (default: the shipped nano model), a published VAR
    checkpoint file (var_d16.pth ..: class-conditional, conditions are class labels), or a released
    Infinity transformer (infinity_2b_reg.pth, or the infinity_8b_weights/ shard folder)"""
    vae: str | None = None
    """tokenizer file of a VAR checkpoint (default: vae_ch160v4096z32.pth beside it), or the BSQ
    tokenizer file of an Infinity model (infinity_vae_d32reg.pth for Infinity-2B)"""
    text_encoder: str | None = None
    """Infinity only: the Flan-T5-XL folder (tokenizer + encoder, as transformers saves it)"""
    schedule: str | None = None
    """Infinity only: scale schedule '1M' (1024 px), '0.60M', '0.25M' (512 px) or '0.06M' (256 px)
    (null: 1M)"""
    aspect_ratio: float | None = None
    """Infinity only: image height / width; the nearest released template is used (null: 1.0)"""
    dtype: str | None = None
    """Infinity only: 'float32', or 'bfloat16' (transformer under bf16 autocast, weights and optimizer
    state stay fp32) (null: float32)"""
    device: str = "cpu"
    """torch device: 'cpu', 'cuda', 'cuda:1' or 'auto' (under torchrun, cuda means cuda:<local rank>)"""

    def __post_init__(self) -> None:
        check_device_name(self, "device")


@dataclass
class TrainConfig:
    """The RL optimisation: batch shape, optimiser, cadence of evals and checkpoints."""

    steps: int = 60
    prompts_per_step: int = 4
    """prompts per update, over all ranks together"""
    group_size: int = 8
    """samples per prompt (G): advantages are normalised within these groups"""
    lr: float = 1e-5
    """AdamW learning rate. 1e-5 on the nano model: at 3e-5 the noise walk of 60 updates lowers the
    held-out reward in every seed (README), at 1e-5 it does not"""
    warmup: int = 5
    """steps of linear LR warm-up"""
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    """max global gradient norm (0: no clipping)"""
    trainable: str | None = None
    """regular expression: train only the policy parameters whose names it matches (re.search), e.g.
    'bias$' (biases only) or 'blocks\\.[67]\\.'; the rest stay frozen (null: train all). With train.lora on it
    must stay null: only the adapters train"""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (docs/lora.md): with rank > 0 only the adapters train, and the KL reference is the
    base model with the adapters off (no second copy of the weights)"""
    epochs: int = 1
    """updates per batch of rollouts (1 = on-policy: the ratio is exactly 1)"""
    micro_batch: int = 16
    """rows per teacher-forced pass (gradients accumulate over micro-batches)"""
    eval_every: int = 0
    """held-out evaluation every n steps (and at step 0 and at the end); 0: only at the ends. Each
    128-prompt evaluation costs about 22 s on 2 cores; the two default runs measured with
    evaluations every 20 steps took 15.2 and 15.3 min alone (README). It draws from its own
    generator, so it never changes the training."""
    eval_prompts: int = 128
    """held-out prompts per evaluation (128 one- and two-word prompts hold about 190 words; one
    evaluation's standard error is then about 0.04 in reward, README)"""
    eval_seed: int | None = 0
    """seed of the held-out prompts and sampling noise, shared by all runs so that evaluations are
    paired across seeds and cells (null: use run.seed)"""
    eval_noise_seeds: int = 1
    """noise draws per held-out prompt at each evaluation (noise seeds eval_seed, eval_seed+1, ...; the
    prompts stay those of eval_seed): the metrics average over them, and report.md reads the run's
    change paired by prompt and seed with its standard error. Each extra draw costs one more
    evaluation (about 22 s per 128 prompts on 2 cores); 4 is what benchmarks/paired_eval.py reads"""
    save_every: int = 10
    keep_checkpoints: int = 2
    samples_in_grid: int = 16
    """images per samples/step_XXXXXX.png grid (taken from the evaluation)"""
    threads: int = 0
    """torch intra-op threads (0: torch's default)"""
    grad_checkpointing: bool = False
    """recompute each transformer block in the backward pass instead of storing its activations
    (Infinity models; less memory for about a third more update time)"""
    fsdp: bool = False
    """shard the weights, gradients and optimizer state of the policy (and the frozen reference)
    over the processes of torchrun with FSDP2, block by block (Infinity models that do not fit
    one GPU); needs at least 2 processes"""

    def __post_init__(self) -> None:
        check_ranges(self, {
            "steps": at_least(1), "prompts_per_step": at_least(1),
            "group_size": at_least(2, "(GRPO compares samples within a group)"), "lr": positive,
            "warmup": at_least(0), "weight_decay": at_least(0), "betas": Range(0, 1, hi_open=True),
            "grad_clip": at_least(0, "(0: no clipping)"), "epochs": at_least(1), "micro_batch": at_least(1),
            "eval_every": at_least(0, "(0: only at the start and the end)"), "eval_prompts": at_least(1),
            "eval_seed": seed_range, "eval_noise_seeds": at_least(1),
            "save_every": at_least(1, "(the last step is always saved)"),
            "keep_checkpoints": at_least(1, "(how many of the newest to keep; a large number keeps all)"),
            "samples_in_grid": at_least(1), "threads": at_least(0, "(0: torch's default)")})
        if self.trainable is not None:
            import re

            try:
                re.compile(self.trainable)
            except re.error as e:
                raise FieldError("trainable", f"is not a regular expression ({e}): {self.trainable!r}") from None
        if self.lora.enabled and self.trainable is not None:
            raise FieldError("trainable", f"cannot be combined with train.lora.rank={self.lora.rank}: with LoRA only "
                             "the adapters train (the base weights stay frozen, they are the KL reference); choose "
                             f"the adapted layers with train.lora.targets instead, got {self.trainable!r}")


@dataclass
class VmrConfig:
    """Value as Middle Return: split at grid m; the prefix learns from a soft value of K completions."""

    enabled: bool = False
    """on with rl.method=var_rl (the paper's method), off with grpo (the default)"""
    m: int | str = "32px"
    """the prefix generates grids 1..m: a step count (4), a resolution ('32px') or a grid ('4x4');
    32px on the nano schedule = step 4, a quarter of the final resolution like the paper's m_256 at 1024px"""
    k: int = 2
    """on-policy completions per prefix for the soft value"""
    eta: float = 1.0
    """temperature of the soft value eta*log(mean exp(R/eta)) (large: mean, small: max)"""
    suffix_prefixes: int = 1
    """shared prefixes per prompt in a suffix update; each gets train.group_size completions"""
    prefix_kl_beta: float | None = None
    """KL coefficient of the prefix updates, whose two stages the paper regularises separately
    (null: rl.kl_beta, which the suffix and plain updates always use)"""
    splits: list[int | str] | None = None
    """per-scale Monte-Carlo advantages (VinePPO-style): VMR at every split listed, each given like m
    ([2, '32px', '8x8']); every update then trains all grids, grids m_(j-1)+1..m_j credited with
    V(s_mj) - V(s_m(j-1)) from k completions of the sample's own state, the last ones with R - V(s_mJ).
    rl.vmr.m, rl.alternation, suffix_prefixes and prefix_kl_beta are then unused (null or []: the single
    split rl.vmr.m with the prefix/suffix alternation, the paper's method)"""

    def __post_init__(self) -> None:
        check_ranges(self, {"k": at_least(1), "eta": positive, "suffix_prefixes": at_least(1),
                            "prefix_kl_beta": at_least(0, "(0: no KL term)")})


@dataclass
class PanwConfig:
    alpha: float | None = None
    """step weight k_t = (h_t*w_t)^-alpha on the sum of the step's token terms (null: off; rl.method=var_rl
    sets the paper's 0.6)"""

    def __post_init__(self) -> None:
        check_ranges(self, {"alpha": Range(0, 2, note="(the paper uses 0.6; null switches PANW off)")})


@dataclass
class MpConfig:
    """Mask Propagation: the reward's boxes -> a mask on the finest grid -> every coarser grid."""

    enabled: bool = False
    """on with rl.method=var_rl, off with grpo (the default)"""
    pool: Literal["max", "area"] = "max"
    """max: a coarse cell is on when any finer on-cell overlaps it; area: when >= threshold of it is covered"""
    threshold: float = 0.5
    dilation: int = 1
    """grow the finest-grid mask by this many cells (OCR boxes are tight)"""
    mask_kl: bool = False
    """gate the KL term too (default: the KL keeps the whole image anchored)"""

    def __post_init__(self) -> None:
        check_ranges(self, {"threshold": Range(0, 1, lo_open=True, note="(a share of a cell's area)"),
                            "dilation": at_least(0)})


@dataclass
class RegionCreditConfig:
    """Region-level credit: with a reward that scores each target word (text_ocr), the tokens inside a
    word's box take that word's own advantage (its scores normalised over the group, like rl.adv_norm
    does for images). Boxes become grid masks with MP's geometry: rl.mp.pool, rl.mp.threshold and
    rl.mp.dilation, whether MP is on or not. Applies to updates judged by the image's own final reward
    (GRPO, VMR suffix); VMR prefix updates, judged by a soft value, keep the image's advantage."""

    enabled: bool = False
    outside: Literal["image", "mask"] = "image"
    """tokens outside every word's box: take the image's advantage, or carry no policy gradient ('mask';
    a sample none of whose words was read keeps the image's advantage everywhere)"""
    unit: Literal["word", "letter"] = "word"
    """what a region is: a target word (its Comp + Sim), or one letter of one (text_ocr: the OCR
    confidence of the character read across from it, 0 when misread or missing; its box is that
    character's)"""


METHOD_PRESETS: dict[str, dict] = {
    "grpo": {"vmr": {"enabled": False}, "panw": {"alpha": None}, "mp": {"enabled": False}},
    "var_rl": {"vmr": {"enabled": True}, "panw": {"alpha": 0.6}, "mp": {"enabled": True}, "alternation": "fine"},
}
"""What rl.method switches on; keys given explicitly in a config or on the command line win.
The dataclass defaults below are the grpo preset, so TrainRunConfig() is the default method. GRPO
is the default because it is the best configuration measured on the shipped nano model (README,
"What `varrl train` does today"): with the paper's full method the held-out reward falls."""


@dataclass
class RlConfig:
    """The policy-gradient objective."""

    method: Literal["grpo", "var_rl"] = "grpo"
    """grpo: group-relative policy gradient (the default, the best measured on the nano model);
    var_rl: VMR + PANW + MP with fine alternation (arXiv 2601.02256)"""
    adv_norm: Literal["group", "batch", "none", "loo"] = "group"
    """divide the centred rewards by the group std, the batch std, or nothing; 'loo': RLOO's leave-one-out
    baseline, A_i = R_i - mean of the other samples of the group = n/(n-1) (R_i - mean), no std"""
    adv_clip: float | None = None
    """clip advantages to +-adv_clip (null: no clipping)"""
    adv_std_floor: float = 0.0
    """with adv_norm group or batch: divide by max(std, adv_std_floor), so a group whose rewards
    differ only by the reward's jitter (the OCR reward: 2.00 against 1.99) keeps small advantages
    instead of unit-scale ones (0: plain std; in reward units, the OCR reward spans 0..2)"""
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_beta: float = 0.5
    """k3 KL to the frozen starting policy, per token (0: no reference model is kept). 0.5 holds the
    nano model's noise walk (README: at 0.01 every method drifts and the held-out reward falls)"""
    vmr: VmrConfig = field(default_factory=VmrConfig)
    alternation: str = "fine"
    """with VMR: 'fine' (3 prefix updates, 1 suffix, repeated), 'coarse' (prefix updates for 3/4
    of train.steps, then suffix updates) or 'a:b'"""
    panw: PanwConfig = field(default_factory=PanwConfig)
    mp: MpConfig = field(default_factory=MpConfig)
    region_credit: RegionCreditConfig = field(default_factory=RegionCreditConfig)
    last_grid: int | str | None = None
    """the last grid the update trains, given like rl.vmr.m (a grid count, 64px or 8x8; null: every
    grid). Later grids are still sampled and scored but carry no loss, and the update's teacher-forced
    pass stops at this grid (benchmarks/reward_decided.py: which grids decide the reward)"""

    @property
    def per_scale(self) -> bool:
        """Whether updates are per-scale (VMR at several splits, all grids in one update)."""
        return self.vmr.enabled and bool(self.vmr.splits)

    def __post_init__(self) -> None:
        check_ranges(self, {"adv_clip": positive, "adv_std_floor": at_least(0),
                            "clip_low": Range(0, 1, lo_open=True, hi_open=True), "clip_high": positive,
                            "kl_beta": at_least(0, "(0: no KL term)")})
        if self.adv_std_floor > 0 and self.adv_norm not in ("group", "batch"):
            raise FieldError("adv_std_floor", f"only applies when advantages are divided by a std (adv_norm group "
                             f"or batch), not with adv_norm={self.adv_norm}: drop it or change adv_norm")

    def kl_beta_for(self, stage: str) -> float:
        """The KL coefficient of an update of `stage` ('full', 'prefix', 'suffix' or 'per_scale')."""
        if stage == "prefix" and self.vmr.prefix_kl_beta is not None:
            return self.vmr.prefix_kl_beta
        return self.kl_beta

    def uses_kl(self) -> bool:
        """Whether any update of this config has a KL term (else no reference copy is kept)."""
        return self.kl_beta > 0 or (self.vmr.enabled and self.kl_beta_for("prefix") > 0)


@dataclass
class DataConfig:
    """Where prompts come from: the synthetic generator (train and held-out words are disjoint) or files."""

    synth: SynthConfig = field(default_factory=nano_text_data)
    prompts_file: str | None = None
    """JSONL training prompts ({"prompt": ..., "words": [...]}); replaces the synthetic train split"""
    eval_prompts_file: str | None = None
    """JSONL evaluation prompts; default: the synthetic held-out split"""
    classes: list[int] | None = None
    """class labels to train on (class-conditional models such as VAR-d16); replaces the text prompts"""
    eval_classes: list[int] | None = None
    """held-out class labels for evaluation (default: data.classes)"""


@dataclass
class TrainRunConfig:
    """Everything `varrl train` needs."""

    run: RunConfig = field(default_factory=lambda: RunConfig(name="nano_text"))
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    sampler: SamplerConfig = field(default_factory=nano_sampler)
    """rollout sampling (CFG, truncation) and the log-prob mode the update uses"""
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        # Each section checks its own ranges; what is left are rules that span sections.
        rl = self.rl
        if rl.vmr.splits and not rl.vmr.enabled:
            raise ValueError("rl.vmr.splits needs VMR: set rl.method=var_rl or rl.vmr.enabled=true (the default "
                             "rl.method=grpo has it off), or drop rl.vmr.splits")
        if rl.region_credit.enabled and rl.per_scale:
            raise ValueError("rl.region_credit.enabled does not combine with rl.vmr.splits: per-scale updates are "
                             "judged by soft values, not by the image's own word scores; drop one of the two")
        if rl.last_grid is not None and rl.vmr.enabled:
            raise ValueError("rl.last_grid does not combine with VMR (its stages choose their own grids): use it "
                             "with rl.method=grpo, or drop rl.last_grid")
        from varrl.algorithms.stages import parse_alternation

        parse_alternation(self.rl.alternation)  # a bad pattern fails at load time, naming the key


def apply_method_preset(data: dict) -> dict:
    """Put the preset of data's rl.method beneath the given keys (explicit keys win)."""
    method = (data.get("rl") or {}).get("method", RlConfig.method)
    preset = METHOD_PRESETS.get(method)
    if preset is None:
        return data  # from_dict reports the bad method with the valid choices
    return {**data, "rl": _merge(preset, data.get("rl") or {})}


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out
