"""Errors that mean "bad input from the user": the CLI prints them as one clear line."""

from __future__ import annotations

from varrl.checkpoint import CheckpointError
from varrl.config import ConfigError
from varrl.models.text import PromptError
from varrl.policy.sampler import SamplerConfigError
from varrl.recipes.common import RunDirError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, CheckpointError, PromptError, RunDirError, SamplerConfigError,
                                            FileNotFoundError)
