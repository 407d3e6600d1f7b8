"""Text embeddings with the pooling and prefixes each model family was trained with.

Using an encoder without its family's query/passage prefixes or its pooling costs
recall silently, so the family is worked out from the model name (or set
explicitly) and applied on both the indexing and the query side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import sources as model_sources


@dataclass(frozen=True)
class EmbeddingFamily:
    """How a family of encoders expects its inputs and pools its outputs."""

    name: str
    pooling: str  # "mean" or "cls"
    query_prefix: str = ""
    passage_prefix: str = ""


E5_INSTRUCT_TASK = "Given a question, retrieve passages that answer the question"

FAMILIES = {
    "sentence-transformers": EmbeddingFamily("sentence-transformers", "mean"),
    "e5": EmbeddingFamily("e5", "mean", "query: ", "passage: "),
    "e5-instruct": EmbeddingFamily("e5-instruct", "mean", f"Instruct: {E5_INSTRUCT_TASK}\nQuery: ", ""),
    "bge": EmbeddingFamily("bge", "cls", "Represent this sentence for searching relevant passages: ", ""),
}


def detect_family(model: str) -> EmbeddingFamily:
    """Pick the family from a model spec; unknown encoders get plain mean pooling."""
    name = model_sources.model_name(model).lower()
    if "e5" in name and "instruct" in name:
        return FAMILIES["e5-instruct"]
    if "e5" in name:
        return FAMILIES["e5"]
    if "bge" in name:
        return FAMILIES["bge"]
    return FAMILIES["sentence-transformers"]


def _torch_device(device: str):
    import torch

    return torch.device(device)


class Embedder:
    """A transformers encoder producing L2-normalised float32 embeddings."""

    def __init__(self, model: str, device: str = "cpu", max_length: int = 256,
                 family: EmbeddingFamily | None = None, batch_size: int = 32):
        import torch
        from transformers import AutoTokenizer

        self.model_id = model_sources.model_name(model)
        self.family = family or detect_family(model)
        self.device = _torch_device(device)
        self.batch_size = batch_size
        # dummy: specs (random weights of a real shape) borrow the builtin MiniLM tokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(model_sources.tokenizer_source(model, causal=False),
                                                       trust_remote_code=False)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = model_sources.load_model(model, self.device, dtype, causal=False)
        self.max_length = min(max_length, self.tokenizer.model_max_length or max_length)
        self.dimension = int(self.model.config.hidden_size)

    def warm_up(self, batch_sizes: Sequence[int] = (1, 4, 16, 32), words: Sequence[int] = (4, 24, 96)) -> float:
        """Encode dummy texts of a few batch sizes and lengths; returns the seconds it took.
        On a GPU the first batches of each new shape load their kernels lazily, which would make
        the first requests after a start wait (docs/decisions/0055-serving-glue-choices.md)."""
        start = time.perf_counter()
        for size in batch_sizes:
            for count in words:
                self._encode([" ".join(["warm"] * count)] * min(size, self.batch_size))
        return time.perf_counter() - start

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.family.query_prefix + t for t in texts])

    def embed_queries_on_device(self, texts: Sequence[str]):
        """As `embed_queries`, a float32 torch tensor left on the model's device (a GPU
        instance hands it to the retriever through DLPack, with no host round trip)."""
        return self._encode([self.family.query_prefix + t for t in texts], on_device=True)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.family.passage_prefix + t for t in texts])

    def _encode(self, texts: Sequence[str], on_device: bool = False):
        import torch

        if on_device:
            out = torch.empty((len(texts), self.dimension), dtype=torch.float32, device=self.device)
        else:
            out = np.empty((len(texts), self.dimension), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start:start + self.batch_size])
                batch = self.tokenizer(chunk, padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                pooled = pool(hidden, batch["attention_mask"], self.family.pooling)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[start:start + len(chunk)] = pooled if on_device else pooled.cpu().numpy()
        return out


def pool(hidden, attention_mask, mode: str):
    """Mean over real tokens, or the first ([CLS]) token."""
    if mode == "cls":
        return hidden[:, 0]
    if mode != "mean":
        raise ValueError(f"unknown pooling {mode!r}")
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
