"""Serving: chat templates in use, ``lt chat``, and the OpenAI-compatible ``lt serve``.

A layer above ``lt.nn`` and ``lt.generate``: it calls the model's own forward through the
decoding interface (:class:`lt.generate.Decoder`) and adds no branch inside it.

- ``batch``: :class:`~lt.serve.batch.Batch`, rows of different lengths decoding together over
  one KV cache, joining and leaving between steps; a row's numbers never depend on the others.
- ``scheduler``: :class:`~lt.serve.scheduler.Scheduler`, the decode thread (continuous
  batching: admit, step, retire) and :class:`~lt.serve.scheduler.Sequence`, one choice.
- ``text``: :class:`~lt.serve.text.TextStream`, token ids to final text pieces, stop strings.
- ``protocol``: the OpenAI request bodies, checked; :class:`~lt.serve.protocol.APIError`.
- ``app``: the Starlette app (``pip install 'lt[serve]'``), imported only when asked for.

Chat templates themselves are read and rendered by :mod:`lt.hf.chat_template`.
"""

from .batch import Batch, Row
from .protocol import APIError
from .scheduler import QueueFull, Scheduler, Sequence
from .text import TextStream

__all__ = ["Batch", "Row", "Scheduler", "Sequence", "QueueFull", "TextStream", "APIError"]
