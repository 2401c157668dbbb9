"""The published FoundationVision VAR models (class-conditional ImageNet) and their tokenizer."""

from varrl.models.var.files import build_vae, build_var, infer_vae_config, infer_var_config, read_state_dict
from varrl.models.var.transformer import PATCH_NUMS_256, PATCH_NUMS_512, VAR, VarConfig, var_preset
from varrl.models.var.vqvae import VQVAE, VaeConfig, phi_index

__all__ = ["PATCH_NUMS_256", "PATCH_NUMS_512", "VAR", "VQVAE", "VaeConfig", "VarConfig", "build_vae", "build_var",
           "infer_vae_config", "infer_var_config", "phi_index", "read_state_dict", "var_preset"]
