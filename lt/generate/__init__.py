"""Text generation with a GPT: sampling filters, a KV cache, decoding, beam search.

Inference only (plain NumPy, no autodiff)::

    ids = lt.generate.generate(model, params, prompt_ids, rng=rng, max_new_tokens=50,
                               temperature=0.8, top_k=50, top_p=0.95)   # = model.generate(...)
    for tok in lt.generate.stream(model, params, prompt, rng=rng, max_new_tokens=50):
        print(tokenizer.decode([tok]), end="", flush=True)
    seqs, scores = lt.generate.beam_search(model, params, prompt, num_beams=4, max_new_tokens=20)

Every forward pass here is ``GPT.forward``, the model's own; this package adds what
decoding needs around it. It never imports ``lt.nn``: the model is an argument. The one
import the other way is ``GPT.generate``, a forwarder to :func:`generate` imported when
called, so the two never import each other.

- ``prompts``: ``prepare_prompts`` (left padding), ``prepare_decoding`` (the checks every
  decoder shares).
- ``sampling``: ``distribution`` (what a token is drawn from), ``filter_logits``,
  ``sample``, ``greedy``, ``top_k_indices``: temperature, then top-k, then top-p.
- ``kv_cache``: ``prefill``, ``extend``, ``KVCache`` (an immutable value), and the
  unchecked steps decoders use after their own checks (``prefill_prompts``, ``extend_prepared``).
- ``decode``: ``generate``, ``stream``, ``stream_window`` (past ``max_seq_len``).
- ``beam``: ``beam_search``, ``BeamResult``.
"""

from .beam import BeamResult, beam_search
from .decode import generate, stream, stream_window
from .kv_cache import KVCache, extend, extend_prepared, prefill, prefill_prompts
from .model import Decoder
from .prompts import Prompts, prepare_decoding, prepare_prompts
from .sampling import distribution, filter_logits, greedy, sample, top_k_indices

__all__ = [
    "generate",
    "stream",
    "stream_window",
    "beam_search",
    "BeamResult",
    "KVCache",
    "Decoder",
    "prefill",
    "extend",
    "prefill_prompts",
    "extend_prepared",
    "Prompts",
    "prepare_prompts",
    "prepare_decoding",
    "distribution",
    "filter_logits",
    "sample",
    "greedy",
    "top_k_indices",
]
