"""Choosing the next token: greedy (computed inside the decode step) or temperature/top-p.

Greedy rows take the step's argmax, so a batch of greedy requests costs no extra
work; only rows that asked for sampling go through softmax, sort and multinomial.
"""

from __future__ import annotations

from typing import Sequence


def sample(logits, temperature: Sequence[float], top_p: Sequence[float], generator=None):
    """One token id per row of `logits` [n, vocab] (each row's temperature > 0)."""
    import torch

    # a tiny (even subnormal, or flushed-to-zero on the GPU) temperature must act as greedy:
    # shift each row's maximum to 0 before dividing, so the top token scales to 0 rather than
    # inf, and divide by at least the smallest normal float32
    t = torch.tensor(temperature, device=logits.device, dtype=torch.float32)[:, None]
    t = t.clamp(min=torch.finfo(torch.float32).tiny)
    p = torch.tensor(top_p, device=logits.device, dtype=torch.float32)[:, None]
    logits = logits.float()
    probs = torch.softmax((logits - logits.amax(dim=-1, keepdim=True)) / t, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # keep the smallest prefix whose mass reaches top_p (the top token always stays)
    drop = (sorted_probs.cumsum(-1) - sorted_probs) >= p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    choice = torch.multinomial(sorted_probs, 1, generator=generator)
    return order.gather(-1, choice)[:, 0]
