"""HPSv3 (Ma et al., ICCV 2025): a human-preference reward model on a Qwen2-VL-7B backbone.

varrl's own implementation, compatible with the released weights (MizzenAI/HPSv3 `HPSv3.safetensors`
with Qwen/Qwen2-VL-7B-Instruct as the backbone). Facts learnt from reading the published `hpsv3`
1.0.0 package (transformers 4.45.2), which the scores depend on:

- Image: converted to RGB and resized (PIL bicubic) by Qwen2-VL's "smart resize" with
  min_pixels = max_pixels = 256 * 28 * 28: both sides become multiples of 28 with an area as close
  to 200,704 px as the aspect ratio allows (448 x 448 for a square image); see `hps_resize`.
  The Qwen2-VL image processor then only rescales by 1/255, normalises (CLIP mean/std) and patchifies.
- Text: one user turn of the Qwen2-VL chat format (default system prompt, the image first, then the
  text, then the assistant generation prompt). The text is the released instruction with the prompt
  after "Textual prompt - ", followed by "Please provide the overall ratings of this image: <|Reward|>"
  and "END". `<|Reward|>` is one extra special token appended to the Qwen2-VL tokenizer (id 151657
  with the stock tokenizer); the token embedding matrix is resized to len(tokenizer), so the released
  checkpoint's embed_tokens/lm_head have 151,658 rows.
- Forward: image features replace the <|image_pad|> embeddings; the language model runs with
  plain positions 0..L-1 on all three rotary axes (the package calls the text model directly and
  never computes Qwen2-VL's multimodal rope index); right padding.
- Head `rm_head` (fp32) on the final hidden state (after the last norm) at the <|Reward|> token:
  Linear(3584, 1024) - ReLU - Dropout(0.05) - Linear(1024, 16) - ReLU - Linear(16, 2), state-dict
  keys rm_head.{0,3,5}.{weight,bias}. The two outputs are (mu, sigma) of a Gaussian preference
  score; the score is mu.
- Checkpoint: the full model's state dict (strictly loaded), keys in transformers 4.45 layout:
  `visual.*`, `model.*` (language model), `lm_head.weight`, `rm_head.*`; bf16 weights.

Files varrl needs: `backbone` = a Qwen2-VL-7B-Instruct directory (config.json, tokenizer files,
preprocessor_config.json; its weights are not read when the checkpoint holds the full model) and
`checkpoint` = HPSv3.safetensors. A checkpoint with only rm_head.* keys is also accepted; the
backbone's weights (with the reward token already in its vocabulary) are then loaded from `backbone`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from varrl.device import resolve_device
from varrl.rewards.base import Reward, RewardResult, check_inputs
from varrl.rewards.hf import ModelUnavailable, import_transformers, to_pil

REWARD_TOKEN = "<|Reward|>"
IMAGE_PAD = "<|image_pad|>"
PIXELS = 256 * 28 * 28
FACTOR = 28  # patch 14 x spatial merge 2
MAX_RATIO = 200
HOW = ("give hpsv3.backbone = a local Qwen2-VL-7B-Instruct directory (config, tokenizer and preprocessor files "
       "from the hub repo Qwen/Qwen2-VL-7B-Instruct) and hpsv3.checkpoint = the released HPSv3.safetensors "
       "(hub repo MizzenAI/HPSv3)")

# The released model's instruction text, reproduced exactly: the model was trained on these bytes.
INSTRUCTION = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall"
    " score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10"
    " being the best. \n\n**Visual Quality:**  \nEvaluate the overall visual quality of the image. The following"
    " sub-dimensions should be considered:\n- **Reasonableness:** The image should not contain any significant"
    " biological or logical errors, such as abnormal body structures or nonsensical environmental setups.\n-"
    " **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to"
    " interpret, with no blurring or indistinct areas.\n- **Detail Richness:** Consider the level of detail in"
    " textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).\n- **Aesthetic and"
    " Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere,"
    " depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.\n-"
    " **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or"
    " adult material. If such content is present, the image quality and satisfaction score should be the lowest"
    " possible. \n\n**Text Alignment:**  \nAssess how well the image matches the textual prompt across the"
    " following sub-dimensions:\n- **Subject Relevance** Evaluate how accurately the subject(s) in the image"
    " (e.g., person, animal, object) align with the textual description. The subject should match the"
    " description in terms of number, appearance, and behavior.\n- **Style Relevance:** If the prompt specifies a"
    " particular artistic or stylistic style, evaluate how well the image adheres to this style.\n- **Contextual"
    " Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit"
    " the scenario described in the prompt. The environment should support and enhance the subject without"
    " contradictions.\n- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g.,"
    " colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor"
    " deviations may be acceptable, but critical attributes should be preserved.\n- **Semantic Coherence**:"
    " Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated"
    " content should not introduce elements that conflict with or distort the original description.\nTextual"
    " prompt - {prompt}\n\n\n"
)
RATING = f"\nPlease provide the overall ratings of this image: {REWARD_TOKEN}\n\nEND\n"


class HpsUnavailable(ModelUnavailable):
    """The HPSv3 backbone or checkpoint could not be loaded."""


def hps_resize(height: int, width: int, pixels: int = PIXELS, factor: int = FACTOR) -> tuple[int, int]:
    """(height, width) the image is resized to: multiples of `factor`, area as close to `pixels` as
    the rounding allows (Qwen2-VL's smart resize with min_pixels = max_pixels = pixels)."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds {MAX_RATIO}")
    # Python's round (half to even) on purpose: the reference rounds the same way.
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > pixels:
        beta = math.sqrt(height * width / pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < pixels:
        beta = math.sqrt(pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def hps_text(prompt: str) -> str:
    """The whole model input text for one prompt, before the image pad token is expanded."""
    user = INSTRUCTION.format(prompt=prompt) + RATING
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|>{IMAGE_PAD}<|vision_end|>{user}<|im_end|>\n<|im_start|>assistant\n")


def backbone_key(key: str) -> str | None:
    """A released (or transformers 5 layout) checkpoint key as a key of `Qwen2VLModel`; None for
    keys the reward does not use (the language-model head)."""
    if key.startswith("lm_head."):
        return None
    for old, new in (("model.visual.", "visual."), ("model.language_model.", "language_model."),
                     ("visual.", "visual."), ("model.", "language_model.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def build_head(state: dict):
    """The reward head in the released layout (Sequential indices 0, 3, 5); widths read from `state`."""
    import torch
    from torch import nn

    need = ["0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"]
    missing = [f"rm_head.{k}" for k in need if k not in state]
    if missing:
        raise HpsUnavailable(f"the HPSv3 checkpoint lacks reward-head tensors {missing}; {HOW}")
    (h1, d), (h2, _), (out, _) = state["0.weight"].shape, state["3.weight"].shape, state["5.weight"].shape
    head = nn.Sequential(nn.Linear(d, h1), nn.ReLU(), nn.Dropout(0.05), nn.Linear(h1, h2), nn.ReLU(),
                         nn.Linear(h2, out))
    head.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return head.eval()


def read_checkpoint(path: str) -> dict:
    """State dict of a .safetensors or .pt/.pth file (tensors only: weights_only=True)."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise HpsUnavailable(f"HPSv3 checkpoint {path!r} does not exist; {HOW}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as err:  # pickled code (refused by weights_only) or not a torch file at all
            raise HpsUnavailable(f"cannot read HPSv3 checkpoint {path!r} as tensors ({type(err).__name__}); "
                                 f"use the released HPSv3.safetensors") from err
    return state.get("model", state) if isinstance(state.get("model"), dict) else state


def _load_backbone(transformers, backbone: str, state: dict, dtype, device: str):
    """The Qwen2-VL model without its LM head: built from the config and filled from `state` when the
    checkpoint holds the full model, else loaded from the backbone directory's own weights."""
    import torch

    mapped = {}
    for key, value in state.items():
        new = backbone_key(key)
        if new is not None:
            mapped[new] = value
    if not mapped:
        return transformers.Qwen2VLModel.from_pretrained(backbone, dtype=dtype).to(device)
    config = transformers.AutoConfig.from_pretrained(backbone)
    rows = mapped.get("language_model.embed_tokens.weight")
    if rows is not None:  # the released vocabulary is len(tokenizer) + 1, not the config's padded size
        text_cfg = getattr(config, "text_config", config)
        text_cfg.vocab_size = rows.shape[0]
        config.vocab_size = rows.shape[0]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: a 7B fp32 copy would double the memory
    try:
        with torch.device(device):
            model = transformers.Qwen2VLModel(config)
    finally:
        torch.set_default_dtype(previous)
    try:
        result = model.load_state_dict(mapped, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise HpsUnavailable(f"the HPSv3 checkpoint does not fit the Qwen2-VL backbone in {backbone!r}: "
                             f"{' '.join(str(err).split())[:400]}; {HOW}") from err
    if result.missing_keys or result.unexpected_keys:
        raise HpsUnavailable(f"the HPSv3 checkpoint does not fit the Qwen2-VL backbone in {backbone!r}: missing "
                             f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; {HOW}")
    return model


class HpsV3Scorer:
    """A loaded HPSv3 model: `predict` gives (mu, sigma) per image, `score` the mu."""

    def __init__(self, model, head, tokenizer, image_processor, device: str, batch_size: int = 8,
                 pixels: int = PIXELS):
        self.model, self.head = model.eval(), head.to(device)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.device, self.batch_size, self.pixels = device, batch_size, pixels
        self.reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.merge = int(getattr(image_processor, "merge_size", 2))

    @classmethod
    def load(cls, backbone: str, checkpoint: str, device: str = "auto", dtype: str = "auto",
             batch_size: int = 8, pixels: int = PIXELS) -> HpsV3Scorer:
        """Load tokenizer, image processor and backbone from `backbone`, weights and head from `checkpoint`."""
        import torch

        if not backbone or not Path(backbone).expanduser().is_dir():
            raise HpsUnavailable(f"HPSv3 backbone directory {backbone!r} does not exist; {HOW}")
        transformers = import_transformers("the HPSv3 reward", HpsUnavailable)
        device = resolve_device(device)
        torch_dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                       "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
        state = read_checkpoint(checkpoint)
        head = build_head({k[len("rm_head."):]: v for k, v in state.items() if k.startswith("rm_head.")})
        rest = {k: v for k, v in state.items() if not k.startswith("rm_head.")}
        del state
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(backbone)
            image_processor = transformers.AutoImageProcessor.from_pretrained(backbone)
            if REWARD_TOKEN not in tokenizer.get_vocab():
                tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
            tokenizer.padding_side = "right"
            model = _load_backbone(transformers, str(Path(backbone).expanduser()), rest, torch_dtype, device)
        except HpsUnavailable:
            raise
        except (OSError, ValueError) as err:
            raise HpsUnavailable(f"cannot load the HPSv3 backbone {backbone!r} ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}); {HOW}") from err
        rows = model.get_input_embeddings().weight.shape[0]
        reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        if reward_id >= rows:
            raise HpsUnavailable(f"the backbone's embedding has {rows} rows, none for {REWARD_TOKEN} (id {reward_id}): "
                                 f"its trained embedding is in the full HPSv3 checkpoint; {HOW}")
        return cls(model, head, tokenizer, image_processor, device, batch_size, pixels)

    def _inputs(self, images: list, prompts: list[str]):
        """Token ids, attention mask, pixel patches and grids of one batch, as the released model saw them."""
        pil = []
        for img in to_pil(images):
            h, w = hps_resize(img.height, img.width, self.pixels)
            pil.append(img.resize((w, h), resample=3))  # 3 = bicubic
        vision = self.image_processor(images=pil, return_tensors="pt")
        grid_N3 = vision["image_grid_thw"]
        texts = []
        for prompt, thw in zip(prompts, grid_N3.tolist()):
            n_tokens = thw[0] * thw[1] * thw[2] // self.merge**2
            texts.append(hps_text(prompt).replace(IMAGE_PAD, IMAGE_PAD * n_tokens))
        tok = self.tokenizer(texts, padding=True, return_tensors="pt")
        return tok["input_ids"], tok["attention_mask"], vision["pixel_values"], grid_N3

    def predict(self, images: list, prompts: list[str]) -> np.ndarray:
        """float64 [B, 2]: the head's (mu, sigma) for each image/prompt pair."""
        import torch

        if len(images) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts for {len(images)} images")
        out = []
        for i in range(0, len(images), self.batch_size):
            j = i + self.batch_size
            ids_BL, mask_BL, pixels, grid = self._inputs(images[i:j], prompts[i:j])
            with torch.no_grad():
                out.append(self._forward(ids_BL.to(self.device), mask_BL.to(self.device), pixels.to(self.device),
                                         grid.to(self.device)))
        return np.concatenate(out) if out else np.zeros((0, 2))

    def _forward(self, ids_BL, mask_BL, pixels, grid) -> np.ndarray:
        import torch

        dtype = self.model.get_input_embeddings().weight.dtype
        emb_BLD = self.model.get_input_embeddings()(ids_BL)
        vis = self.model.visual(pixels.to(dtype), grid_thw=grid)
        vis_ND = vis if isinstance(vis, torch.Tensor) else vis.pooler_output
        is_image_BL = ids_BL == self.image_id
        if int(is_image_BL.sum()) != vis_ND.shape[0]:
            raise RuntimeError(f"{int(is_image_BL.sum())} image tokens for {vis_ND.shape[0]} image features")
        emb_BLD = emb_BLD.masked_scatter(is_image_BL[..., None], vis_ND.to(emb_BLD.dtype))
        B, L = ids_BL.shape
        pos_3BL = torch.arange(L, device=ids_BL.device).view(1, 1, L).expand(3, B, L)
        hidden_BLD = self.model.language_model(inputs_embeds=emb_BLD, attention_mask=mask_BL,
                                               position_ids=pos_3BL).last_hidden_state
        at_reward_BL = ids_BL == self.reward_id
        if not (at_reward_BL.sum(1) == 1).all():
            raise RuntimeError(f"each input must hold exactly one {REWARD_TOKEN} token")
        return self.head(hidden_BLD[at_reward_BL].float()).double().cpu().numpy()

    def score(self, images: list, prompts: list[str]) -> np.ndarray:
        """float64 [B]: the HPSv3 score (mu) of each image for its prompt."""
        return self.predict(images, prompts)[:, 0]


@dataclass
class HpsV3Config:
    """Settings of the HPSv3 reward."""

    backbone: str = ""
    """local Qwen2-VL-7B-Instruct directory (config, tokenizer, preprocessor files)"""
    checkpoint: str = ""
    """the released HPSv3.safetensors (full model + rm_head), or a file with only rm_head.* tensors"""
    device: str = "auto"
    """torch device ('auto': cuda when available)"""
    dtype: str = "auto"
    """backbone dtype: auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16 or float32"""
    batch_size: int = 8
    """images per forward pass"""

    def __post_init__(self) -> None:
        from varrl.config_checks import at_least, check_device_name, check_ranges

        check_device_name(self, "device")
        check_ranges(self, {"batch_size": at_least(1)})
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"hpsv3.dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")


class HpsV3Reward(Reward):
    """score = HPSv3 mu (roughly 0-15 for today's generators); components: sigma. Loads on first call."""

    name = "hpsv3"

    def __init__(self, config: HpsV3Config | None = None):
        self.config = config or HpsV3Config()
        self._scorer: HpsV3Scorer | None = None

    def scorer(self) -> HpsV3Scorer:
        if self._scorer is None:  # lazily: the model is 8 billion parameters
            c = self.config
            self._scorer = HpsV3Scorer.load(c.backbone, c.checkpoint, c.device, c.dtype, c.batch_size)
        return self._scorer

    def __call__(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> RewardResult:
        check_inputs(images_BHW3, prompts, meta)
        out_B2 = self.scorer().predict(list(images_BHW3), [str(p) for p in prompts])
        return RewardResult(scores=out_B2[:, 0], components={"sigma": out_B2[:, 1]})

    def close(self) -> None:
        self._scorer = None
