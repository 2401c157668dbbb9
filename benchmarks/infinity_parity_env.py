"""Running FoundationVision's official Infinity code on a CPU, for `infinity_parity.py`.

Nothing of the official code is copied here: it is imported at run time from the folder the user
names. It imports packages that need a GPU (flash-attn) or that this comparison never calls
(timm's registry and DropPath, torchvision, imageio, pandas); `install_stubs` writes throwaway
modules for those into a temporary folder put first on sys.path (torchvision, imageio and pandas
only while the official modules are imported). The official fused norms (`fused_op.py`, what
`load_infinity` selects with fused_norm=True) are torch.compile'd; they run uncompiled here.
Every stub raises if it is called, except `flash_attn_varlen_kvpacked_func`: the official
cross-attention (text pooling and every block's attention to the text) has no other path, so the
stub computes what the kernel computes (per packed sequence, softmax(q k^T * scale) v, not
causal, accumulating in fp32, output in the input dtype).

The official cross-attention casts fp32 inputs to bf16 before that kernel (flash-attn has no fp32
kernel). `no_bf16_casts()` skips those casts so that the official model runs fp32 end to end;
without it the cross-attention sees bf16-rounded inputs, as on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

STUBS = {
    "flash_attn/__init__.py": '''
import torch

def flash_attn_func(*args, **kwargs):
    raise RuntimeError("flash_attn stub: flash_attn_func is not available (the parity run uses the SDPA path)")

def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, **kwargs):
    if dropout_p or causal or kwargs:
        raise RuntimeError("flash_attn stub: only dropout 0, non-causal attention is implemented")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    out = []
    for i in range(len(cu_seqlens_q) - 1):
        q_i = q[int(cu_seqlens_q[i]): int(cu_seqlens_q[i + 1])].float()           # [Lq, H, c]
        k_i, v_i = kv[int(cu_seqlens_k[i]): int(cu_seqlens_k[i + 1])].float().unbind(1)  # [Lk, H, c]
        att = torch.einsum("qhc,khc->hqk", q_i, k_i).mul(scale).softmax(-1)
        out.append(torch.einsum("hqk,khc->qhc", att, v_i).to(q.dtype))
    return torch.cat(out)
''',
    "timm/__init__.py": "",
    "timm/models/__init__.py": "def register_model(fn):\n    return fn\n",
    "timm/models/layers.py": '''
import torch.nn as nn

class DropPath(nn.Module):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("timm stub: DropPath (the parity run uses drop_path_rate=0)")

def drop_path(*args, **kwargs):
    raise RuntimeError("timm stub: drop_path")
''',
    "timm/loss.py": "import torch.nn as nn\n\nclass SoftTargetCrossEntropy(nn.Module):\n    pass\n",
}
IMPORT_ONLY = {"torchvision/__init__.py": "", "torchvision/transforms/__init__.py": "", "imageio/__init__.py": "",
               "torchvision/transforms/functional.py": "def to_tensor(*a, **k):\n    raise RuntimeError('stub')\n",
               "pandas/__init__.py": ""}
"""modules the official tokenizer file and tools/run_infinity.py import and this comparison never
uses: present only while those are imported (transformers would otherwise take the torchvision
stub for the real package and import from it)"""


def install_stubs(official: Path):
    """Write the stub packages to a temporary folder, put it and the official checkout on sys.path,
    import the official modules; returns tools/run_infinity.py as a module (for `encode_prompt`)."""
    import transformers.modeling_utils  # noqa: F401  (settles which optional packages exist first)

    root = Path(tempfile.mkdtemp(prefix="infinity_stubs_"))
    for folder, files in (("always", STUBS), ("import_only", IMPORT_ONLY)):
        for rel, src in files.items():
            f = root / folder / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(src.lstrip())
    sys.path[:0] = [str(official), str(root / "always"), str(root / "import_only")]
    import infinity.models.bsq_vae.flux_vqgan  # noqa: F401
    import infinity.models.fused_op as fused
    import infinity.models.infinity as M

    # The official fused norms are torch.compile'd functions: run the functions themselves, eagerly
    # (the same arithmetic; compiling needs a C++ toolchain and minutes on this CPU).
    for name in ("fused_ada_layer_norm", "fused_ada_rms_norm"):
        eager = getattr(getattr(fused, name), "_torchdynamo_orig_callable", getattr(fused, name))
        setattr(fused, name, eager)
        setattr(M, name, eager)

    spec = importlib.util.spec_from_file_location("official_run_infinity", official / "tools" / "run_infinity.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    sys.path.remove(str(root / "import_only"))
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "imageio", "pandas")]:
        del sys.modules[name]
    return tool


class _NoBF16Casts(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and (kwargs.get("dtype") is torch.bfloat16 or torch.bfloat16 in args[1:]):
            return args[0]
        return func(*args, **kwargs)


def no_bf16_casts(enabled: bool = True):
    return _NoBF16Casts() if enabled else contextlib.nullcontext()


class StayOnCPU(TorchFunctionMode):
    """`tensor.cuda()` returns the tensor (the official `encode_prompt` moves the tokens to a GPU)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cuda:
            return args[0]
        return func(*args, **(kwargs or {}))


def quiet():
    return contextlib.redirect_stdout(io.StringIO())


@torch.no_grad()
def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every float parameter off its init (unit norms, zero biases would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(module.named_parameters()):
        p.add_(torch.randn(p.shape, generator=g) * scale)


def official_vae(d: int, patchify: bool, base_ch: int, res_blocks: int, seed: int):
    """The official BSQ tokenizer (`vae_model`, as `load_visual_tokenizer` calls it) at a smaller width."""
    import infinity.models.bsq_vae.vae as V

    real = V.AutoEncoder

    def smaller(args):  # the official builder fixes base_ch=128, num_res_blocks=2
        return real(argparse.Namespace(**{**vars(args), "base_ch": base_ch, "num_res_blocks": res_blocks}))

    V.AutoEncoder = smaller
    try:
        mult = [1, 2, 4, 4] if patchify else [1, 2, 4, 4, 4]
        with quiet():
            vae = V.vae_model(None, "dynamic", d, 2**d, patch_size=8 if patchify else 16, encoder_ch_mult=mult,
                              decoder_ch_mult=mult, test_mode=True)
    finally:
        V.AutoEncoder = real
    perturb_(vae, seed)
    return vae.eval()


def official_infinity(vae, *, depth: int, width: int, heads: int, chunks: int, text_dim: int, text_maxlen: int,
                      patchify: bool, pn: str, seed: int):
    """The official transformer with `load_infinity`'s arguments (tools/run_infinity.py), dropout and
    drop-path off, the text never dropped, the SDPA attention path (no customized flash, no flex)."""
    from infinity.models.infinity import Infinity

    torch.manual_seed(seed)
    with quiet():
        model = Infinity(vae_local=vae, text_channels=text_dim, text_maxlen=text_maxlen, shared_aln=True,
                         raw_scale_schedule=None, checkpointing="full-block", customized_flash_attn=False,
                         fused_norm=True, pad_to_multiplier=128, use_flex_attn=False,
                         add_lvl_embeding_only_first_block=1, use_bit_label=1, rope2d_each_sa_layer=1,
                         rope2d_normalized_by_hw=2, pn=pn, apply_spatial_patchify=int(patchify), inference_mode=True,
                         train_h_div_w_list=[1.0], depth=depth, embed_dim=width, num_heads=heads, mlp_ratio=4,
                         drop_path_rate=0.0, block_chunks=chunks, cond_drop_rate=0.0)
    perturb_(model, seed + 1, scale=0.02)
    return model.eval()


class SamplerTap:
    """Records, per scale, what the official sampler draws from: the guided, tempered bit logits
    [B, l*d, 2] before and after its top-k / top-p, and the drawn bits."""

    def __init__(self):
        import infinity.models.infinity as M

        self.module, self.real = M, M.sample_with_top_k_top_p_also_inplace_modifying_logits_
        self.raw, self.cut, self.bits = [], [], []

    def __enter__(self):
        def tap(logits_BlV, **kw):
            self.raw.append(logits_BlV.clone())
            idx = self.real(logits_BlV, **kw)  # truncates logits_BlV in place
            self.cut.append(logits_BlV.clone())
            self.bits.append(idx[..., 0].clone())
            return idx

        self.module.sample_with_top_k_top_p_also_inplace_modifying_logits_ = tap
        return self

    def __exit__(self, *exc):
        self.module.sample_with_top_k_top_p_also_inplace_modifying_logits_ = self.real
