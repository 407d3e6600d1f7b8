"""Turning a growing list of token ids into text pieces, with stop strings.

Decoding token by token breaks multi-byte characters and merges, so the whole
answer is decoded each time and only the new suffix is released; text that could
still be the start of a stop string, or an unfinished UTF-8 character, is held
back until the next token decides it.
"""

from __future__ import annotations

from typing import Sequence


class IncrementalText:
    def __init__(self, tokenizer, stop: Sequence[str] = (), eos_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.eos_ids = set(eos_ids)
        self.vocab = len(tokenizer)
        self.tokens: list[int] = []
        self.sent = 0           # characters already released
        self.stopped = False    # a stop string was found: the answer ends before it

    def text(self) -> str:
        # ids beyond the tokenizer (random-weight models with a larger vocabulary) are dropped
        ids = [t for t in self.tokens if t < self.vocab and t not in self.eos_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int | None, final: bool = False) -> str:
        """Add a token (None: nothing new); return the text that is now certain."""
        if token is not None and not self.stopped:
            self.tokens.append(token)
        text = self.text()
        end = len(text)
        for stop in self.stop:
            at = text.find(stop)
            if at != -1:
                end, self.stopped, final = min(end, at), True, True
        if not final:
            if text.endswith("\ufffd"):
                end = min(end, len(text) - 1)
            for stop in self.stop:  # a suffix that may grow into a stop string
                for n in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:n]):
                        end = min(end, len(text) - n)
                        break
        end = max(end, self.sent)
        piece, self.sent = text[self.sent:end], end
        return piece
