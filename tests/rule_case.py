"""The shape of one primitive's case in the rule tests (``test_transform_rules.py``).

A case module (``rule_cases_*.py``) maps each primitive's registry name
(``"lt.ops.basic.add"``) to a function ``make(draw) -> RuleCase``: ``draw`` is hypothesis's,
for drawing shapes and options; ``sample(rng)`` then draws one member's positional arguments
(float64 arrays where a float is expected), each call with the same shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class RuleCase(NamedTuple):
    sample: Callable[[np.random.Generator], tuple]  # one member's positional arguments
    options: dict = {}  # keyword options of the primitive (the same for every member)
    batched: tuple[int, ...] | None = None  # positions that may be batched (None: every array)
    diff: tuple[int, ...] | None = None  # positions given tangents (None: every float array)
    tolerance: float = 1e-5  # relative, of the JVP against central finite differences
