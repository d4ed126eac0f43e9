"""RLTHF: Reinforcement Learning from Targeted Human Feedback, on Ray."""
from rlthf.config import RLTHFConfig, load_config

__all__ = ["RLTHFConfig", "load_config"]
__version__ = "0.1.0"
