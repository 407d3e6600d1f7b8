"""Turning a growing list of token ids into text pieces, with stop strings.

Decoding token by token breaks multi-byte characters and merges, and decoding the whole
answer at every token costs O(length) per token: over a large batch that is more Python
time in the engine thread than the decode step itself (docs/decisions/0055-serving-glue-choices.md).
So each new token is decoded inside a short window of the ids before it (the window trick of
TGI and vLLM: decode ids[prefix:] and ids[prefix:read], release the difference), and only
once that yields whole characters. Text that could still be the start of a stop string is held back
until the next token decides it. Answers nobody streams skip all of it (`append` only).
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
        self.ids: list[int] = []     # the ids that make text: in the vocabulary, not end tokens
        self._prefix = 0             # ids[_prefix:_read] is context whose text is already in `decoded`
        self._read = 0
        self.decoded = ""            # text of ids[:_read], whole characters only
        self.sent = 0                # characters already released
        self.stopped = False         # a stop string was found: the answer ends before it

    def append(self, token: int) -> None:
        """Record a token without producing text (answers sent whole, without stop strings)."""
        self.tokens.append(token)
        # ids beyond the tokenizer (random-weight models with a larger vocabulary) are dropped
        if token < self.vocab and token not in self.eos_ids:
            self.ids.append(token)

    def text(self) -> str:
        """The whole answer so far, decoded at once (exact; O(length))."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _advance(self, final: bool) -> None:
        if self._read == len(self.ids):
            return
        before = self.tokenizer.decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self._prefix:], skip_special_tokens=True)
        if final or (len(after) > len(before) and not after.endswith("\ufffd")):
            self.decoded += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)

    def push(self, token: int | None, final: bool = False) -> str:
        """Add a token (None: nothing new); return the text that is now certain."""
        if token is not None and not self.stopped:
            self.append(token)
        self._advance(final)
        text = self.decoded
        end = len(text)
        for stop in self.stop:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at != -1:
                end, self.stopped, final = min(end, at), True, True
        if not final:
            for stop in self.stop:  # a suffix that may grow into a stop string
                for n in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:n]):
                        end = min(end, len(text) - n)
                        break
        end = max(end, self.sent)
        piece, self.sent = text[self.sent:end], end
        return piece
