"""ranktuner-verl: token-reweighted SFT for verl.

The core is pure PyTorch:
- ``ranktuner_verl.stats``: token statistics from logits (log p, entropy, rank, expected rank, ...), chunked.
- ``ranktuner_verl.methods``: the six weighting methods (sft, dft, talr, eaft, deft, ranktuner) in one registry.

Only ``ranktuner_verl.integration`` imports verl.
"""

__version__ = "0.1.0"
