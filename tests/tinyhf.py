"""Tiny `transformers` tokenizers built offline (no downloads) for the model-reward tests."""

from __future__ import annotations


def byte_tokenizer(special: list[str], bos: str | None = None, eos: str | None = None, pad: str | None = None,
                   max_length: int = 64):
    """A byte-level BPE tokenizer with no merges (one token per byte) plus `special` tokens.

    With bos/eos given, every encoding is wrapped as `bos ... eos` (as CLIP's tokenizer does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for tok in special:
        vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if bos and eos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                   additional_special_tokens=special, model_max_length=max_length)
