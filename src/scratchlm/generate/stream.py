"""Token ids in, text out, as it is generated: whole characters only, cut at stop strings.

A byte-level tokenizer can end a token in the middle of a UTF-8 character (an emoji is often
two or three tokens), so bytes wait until they decode. A stop string can arrive split over
several tokens, so text that could be the start of one is held back until it is known not to be.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from scratchlm.tokenizer.tokenizer import Tokenizer


class TextStream:
    """Decodes one sequence's new tokens incrementally; `stopped` once a stop string appeared."""

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        # Keeps an unfinished character's bytes; bytes no continuation can fix become U+FFFD.
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""
        """Decoded text that may be the beginning of a stop string."""
        self.stopped = False
        self.text = ""
        """Everything released so far."""

    def push(self, token: int) -> str:
        """Add one generated token; return the text it releases (often empty, never past a stop string)."""
        if self.stopped:
            return ""
        decoded = self.decoder.decode(self.tokenizer.token_bytes(token))
        return self._release(self.held + decoded) if decoded else ""

    def finish(self) -> str:
        """The text still held back once generation ends (an unfinished character becomes U+FFFD)."""
        if self.stopped:
            return ""
        tail = self.held + self.decoder.decode(b"", final=True)
        self.held = ""
        out = self._cut_at_stop(tail)
        self.text += out
        return out

    def _cut_at_stop(self, text: str) -> str:
        found = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        if found:
            self.stopped = True
            return text[: min(found)]
        return text

    def _release(self, text: str) -> str:
        out = self._cut_at_stop(text)
        if self.stopped:
            self.held = ""
        else:
            keep = _longest_stop_prefix_suffix(text, self.stop_strings)
            out, self.held = text[: len(text) - keep], text[len(text) - keep :]
        self.text += out
        return out


def _longest_stop_prefix_suffix(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest end of `text` that some stop string starts with."""
    best = 0
    for stop in stop_strings:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[len(text) - n :]):
                best = n
                break
    return best
