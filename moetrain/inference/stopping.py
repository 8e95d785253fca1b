"""When a row stops: at a stop token (the tokenizer's EOS, a template's end-of-turn id), or when its
decoded text contains the template's end-of-turn marker (a tokenizer without that special token
spells ``<|im_end|>`` in several pieces). Every rank holds the same tokens, so every rank decides
the same."""

from __future__ import annotations

from collections.abc import Callable, Iterable

_TAIL_TOKENS = 32  # a marker is shorter than this many tokens; decoding only the tail keeps steps O(1)


class StopRule:
    def __init__(self, token_ids: Iterable[int] = (), texts: Iterable[str] = (),
                 decode: Callable[[list[int]], str] | None = None) -> None:
        self.token_ids = frozenset(int(t) for t in token_ids)
        self.texts = tuple(t for t in texts if t)
        if self.texts and decode is None:
            raise ValueError("stop texts need a decode function")
        self.decode = decode

    def __call__(self, output_ids: list[int]) -> int | None:
        """None to go on; else how many trailing tokens to drop from the output (1: a stop token)."""
        if output_ids and output_ids[-1] in self.token_ids:
            return 1
        if self.texts:
            tail = self.decode(output_ids[-_TAIL_TOKENS:])
            if any(t in tail for t in self.texts):
                return 0
        return None

    def cut_text(self, text: str) -> str:
        """The reply without its end-of-turn marker and what follows it."""
        for t in self.texts:
            if t in text:
                text = text[: text.index(t)]
        return text
