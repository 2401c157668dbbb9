"""The one device helper: 'auto', plain names, and one GPU per process under torchrun."""

import torch

from varrl.device import resolve_device


def test_names_pass_through_and_auto_picks_what_exists():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_torchrun_gives_each_process_its_own_gpu():
    assert resolve_device("cuda", local_rank=3) == "cuda:3"
    assert resolve_device("cuda:0", local_rank=3) == "cuda:0"  # an explicit index wins
    assert resolve_device("cpu", local_rank=3) == "cpu"
