"""The background sampler and the state its instruments and phases read."""

from memspan.sampling.history import MaxHistory
from memspan.sampling.sampler import Sampler
from memspan.sampling.state import SamplerState

__all__ = ["MaxHistory", "Sampler", "SamplerState"]
