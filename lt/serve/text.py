"""Token ids to text as they come: the deltas a stream sends, held back where they may change.

A token's text is not always known when it is drawn: a UTF-8 character split over two byte
tokens decodes to U+FFFD until its second half arrives, and text that might be the start of
a stop string must wait to see whether the stop string follows (OpenAI's ``stop``: the reply
ends *before* it, and never shows it). :class:`TextStream` sends only text that is final,
so the deltas of a stream add up to exactly the text of the same request unstreamed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TextStream"]


class TextStream:
    """The text of a growing list of token ids, given out in final pieces (see the module).

    ``push(token) -> (delta, stopped)``: the new final text, and whether a stop string
    appeared (the reply then ends before it); ``flush()`` gives what was held back.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # the decoded text so far
        self.sent = 0  # characters of it given out

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(int(token))
        self.text = self.tokenizer.decode(np.array(self.ids, np.int64))
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        found = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if found:
            end = min(found)
            delta, self.sent = self.text[self.sent : end], max(self.sent, end)
            self.text = self.text[:end]
            return delta, True
        end = len(self.text) - self.text.endswith("\ufffd")  # an unfinished character waits
        safe = end
        for s in self.stop:  # a suffix that may grow into a stop string waits too
            for k in range(min(len(s) - 1, end), 0, -1):
                if self.text[end - k : end] == s[:k]:
                    safe = min(safe, end - k)
                    break
        delta = self.text[self.sent : max(safe, self.sent)]
        self.sent += len(delta)
        return delta, False

    def flush(self) -> str:
        """The text held back, once no more tokens come."""
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta
