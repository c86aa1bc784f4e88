"""Optimizers and schedules in optax's vocabulary: each optimizer an ``(init, update)`` pair
of pure functions over immutable trees."""

from ..donation import DonatedError, Donation
from .adam_update import AdamState, adam, adamw, decay_mask
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
    EmptyState,
    GradientTransformation,
    MomentumState,
    ScheduleState,
    apply_updates,
    chain,
    clip_by_global_norm,
    current_learning_rate,
    global_norm,
    sgd,
    traced_global_norm,
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
    "traced_global_norm",
    "apply_updates",
    "decay_mask",
    "current_learning_rate",
    "DonatedError",
    "Donation",
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
