"""ranktuner-verl: token-reweighted SFT for verl.

The core is pure PyTorch:
- ``ranktuner_verl.stats``: token statistics from logits (log p, entropy, rank, expected rank, ...), chunked, with
  their fp64 oracle (``stats.reference``).
- ``ranktuner_verl.methods``: the weighting methods in one registry (``METHODS``); every list of methods derives from it.
- ``ranktuner_verl.weighted_nll``: the token-weighted NLL.

Only ``ranktuner_verl.integration`` imports verl.
"""

__version__ = "0.1.0"

from ranktuner_verl import moved  # noqa: E402

moved.install()

from ranktuner_verl.methods import (  # noqa: E402
    METHODS,
    Method,
    expected_rank_proxy,
    get_method,
    guessing_entropy_bound,
    relative_scale,
    token_weights,
)
from ranktuner_verl.weighted_nll import weighted_nll  # noqa: E402
from ranktuner_verl.stats import STATS, expected_rank_sorted, token_stats  # noqa: E402

__all__ = [
    "METHODS", "Method", "STATS", "expected_rank_proxy", "expected_rank_sorted", "get_method", "guessing_entropy_bound", "relative_scale",
    "token_stats", "token_weights", "weighted_nll",
]
