"""varrl: reinforcement-learning fine-tuning of next-scale (VAR) image generators."""

from varrl.policy.load import load_policy
from varrl.policy.sampler import SamplerConfig
from varrl.policy.trajectory import Trajectory
from varrl.schedule import ScaleSchedule

__all__ = ["load_policy", "SamplerConfig", "Trajectory", "ScaleSchedule"]
__version__ = "0.1.0"
