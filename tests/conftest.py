"""Shared fixtures: a tiny random nano model written as a loadable model directory."""

from __future__ import annotations

import pytest
import torch
from tinymodel import build_tiny, write_model_dir

# One intra-op thread: the tensors here are tiny, and on a small machine that is busy with other work
# several OpenMP threads spin against each other and make every test many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_model") / "model"
    write_model_dir(path, *build_tiny(seed=0))
    return path


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory):
    """The tiny model with room for the synthetic training prompts (128 text tokens): what the
    end-to-end `varrl train` tests run on."""
    path = tmp_path_factory.mktemp("tiny_text") / "model"
    write_model_dir(path, *build_tiny(model_kwargs=dict(max_text_len=128)))
    return path


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir):
    from varrl import load_policy

    return load_policy(tiny_model_dir)
