"""A small decode engine for Llama/Qwen2-family causal LMs.

`weights` takes the layers of a transformers model (real or random), `kv_cache`
holds a static key/value cache per batch slot, `decoding` runs prefill and the
decode step (CUDA graphs per batch bucket on a GPU, eager on the CPU), `sampling`
picks tokens, and `scheduler` batches requests at the iteration level: new ones join
the running batch between decode steps and finished ones leave at once.
"""

from .decoding import DecodeEngine
from .scheduler import ContinuousBatcher, Sequence

__all__ = ["DecodeEngine", "ContinuousBatcher", "Sequence"]
