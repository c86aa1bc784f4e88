"""Optimizers and schedules in optax's vocabulary: each optimizer an ``(init, update)`` pair
of pure functions over immutable trees."""

from .muon import NS_COEFFICIENTS, MuonState, muon, muon_labels, newton_schulz, scale_by_muon
from .partition import add_decayed_weights, partition, scale_by_learning_rate
from .schedules import (
    Schedule,
    as_schedule,
    constant,
    cosine_decay,
    linear_warmup,
    warmup_cosine,
    warmup_stable_decay,
)
from .transforms import (
    AdamState,
    EmptyState,
    GradientTransformation,
    MomentumState,
    ScheduleState,
    adam,
    adamw,
    apply_updates,
    chain,
    clip_by_global_norm,
    current_learning_rate,
    decay_mask,
    global_norm,
    sgd,
)

__all__ = [
    "GradientTransformation",
    "ScheduleState",
    "MomentumState",
    "AdamState",
    "EmptyState",
    "sgd",
    "adam",
    "adamw",
    "chain",
    "clip_by_global_norm",
    "global_norm",
    "apply_updates",
    "decay_mask",
    "current_learning_rate",
    "Schedule",
    "constant",
    "linear_warmup",
    "cosine_decay",
    "warmup_cosine",
    "warmup_stable_decay",
    "as_schedule",
    "partition",
    "scale_by_learning_rate",
    "add_decayed_weights",
    "muon",
    "scale_by_muon",
    "muon_labels",
    "newton_schulz",
    "MuonState",
    "NS_COEFFICIENTS",
]
