"""Whether a training step fits in memory: a rough size from the model's shape, and what the
machine has available. ``lt train`` refuses a ``--seq-len`` or ``--batch-size`` that would not
fit, before anything is allocated or written."""

from __future__ import annotations

from ..nn import GPT

__all__ = ["train_step_bytes", "available_bytes"]


def train_step_bytes(model: GPT, batch: int, seq: int, *, remat: bool = False) -> int:
    """A rough size of one float32 training step: weights, gradients and AdamW's two moments
    (16 bytes a parameter) and the activations kept for the backward pass, per token about
    12 D + 3 F a layer and 3 V for the logits and their gradient (no T x T term: attention
    past a few hundred positions is blockwise). With ``remat`` a layer keeps only its (B, T, D)
    input, and one layer's activations exist at a time, recomputed."""
    D, F, L, V = model.hidden_dim, model.ffn_dim, model.num_layers, model.vocab_size
    params = L * (4 * D * D + 2 * D * F) + (V + model.max_seq_len) * D
    layer = 12 * D + 3 * F
    per_token = (L * D + layer if remat else L * layer) + 3 * V
    return 16 * params + 4 * batch * seq * per_token


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is no such file (no check then)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None
