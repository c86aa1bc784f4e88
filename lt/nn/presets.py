"""The named model configurations ``GPT.preset(name)`` builds: six sizes, and the fields of
another family than GPT-2's."""

from __future__ import annotations

__all__ = ["PRESETS", "FAMILY", "LLAMA"]

# name: (vocab_size, max_seq_len, num_layers, num_heads, hidden_dim, ffn_dim)
PRESETS = {
    "tiny": (500, 128, 2, 2, 32, 128),
    "small": (1000, 256, 4, 4, 64, 256),
    "mini": (256, 256, 4, 4, 128, 512),  # nanoGPT's CPU Shakespeare model; the CLI's default
    "medium": (5000, 512, 6, 6, 192, 768),
    "large": (10000, 1024, 12, 8, 256, 1024),
    "gpt2": (50257, 1024, 12, 12, 768, 3072),
    # Llama-shaped (RMS norm, rotary positions, SwiGLU, grouped-query attention, no biases)
    "llama-tiny": (500, 128, 2, 4, 32, 96),
    "llama-mini": (256, 256, 4, 4, 128, 408),  # mini's size (857,216 vs 858,880 parameters)
    "smollm-135m": (49152, 2048, 30, 9, 576, 1536),  # SmolLM-135M's shape, tied embeddings
}

LLAMA = dict(norm="rms", positional="rope", activation="swiglu", bias=False)
# name: the fields beyond the six sizes, for presets of another family than GPT-2
FAMILY = {
    "llama-tiny": dict(LLAMA, num_kv_heads=2),
    "llama-mini": dict(LLAMA, num_kv_heads=2),
    "smollm-135m": dict(LLAMA, num_kv_heads=3, rope_theta=10000.0),
}
