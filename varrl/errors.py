"""Errors that mean "bad input from the user": the CLI prints them as one clear line."""

from __future__ import annotations

from varrl.checkpoint import CheckpointError
from varrl.config import ConfigError
from varrl.data.prompts import PromptFileError
from varrl.data.regions import RegionMixError
from varrl.eval.cvtg import BenchmarkError, EvalError
from varrl.models.text import PromptError
from varrl.policy.sampler import SamplerConfigError
from varrl.policy.var_policy import ClassLabelError
from varrl.rundir import RunDirError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, PromptFileError, CheckpointError, PromptError, RunDirError,
                                            SamplerConfigError, FileNotFoundError, BenchmarkError, EvalError,
                                            RegionMixError, ClassLabelError)
