"""A tiny random nano model (tokenizer + transformer) and a writer for model directories."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from varrl.config import to_dict
from varrl.models.nano import NanoConfig, NanoVAR
from varrl.models.tokenizer import TokenizerConfig, VQTokenizer

TINY_TOKENIZER = dict(image_size=32, sides=(1, 2, 4), vocab_size=64, code_dim=8, channels=16, res_blocks=1,
                      refine_channels=4)
TINY_MODEL = dict(dim=32, depth=2, heads=2, text_depth=1, max_text_len=64)


def build_tiny(seed: int = 0, tok_kwargs: dict | None = None, model_kwargs: dict | None = None):
    """A tiny tokenizer + nano model with perturbed random weights (non-uniform distributions)."""
    tok_cfg = TokenizerConfig(**{**TINY_TOKENIZER, **(tok_kwargs or {})})
    model_cfg = NanoConfig(**{**TINY_MODEL, **(model_kwargs or {})})
    torch.manual_seed(seed)
    tok = VQTokenizer(tok_cfg)
    model = NanoVAR(model_cfg, tok_cfg.schedule(), tok_cfg.vocab_size, tok_cfg.code_dim)
    with torch.no_grad():
        for module, std in ((tok, 0.1), (model, 0.15)):
            for p in module.parameters():
                if p.is_floating_point():
                    p.add_(torch.randn_like(p) * std)
    return tok_cfg, model_cfg, tok, model


def write_model_dir(path, tok_cfg, model_cfg, tok, model) -> None:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format": "varrl-nano/1", "tokenizer": to_dict(tok_cfg), "model": to_dict(model_cfg)}
    (path / "config.json").write_text(json.dumps(meta, indent=1))
    save_file({k: v.contiguous() for k, v in tok.state_dict().items()}, str(path / "tokenizer.safetensors"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
