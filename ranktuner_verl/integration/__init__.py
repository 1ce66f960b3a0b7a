"""Everything that touches verl, in three rooms: the plugin layer here (entry point, activation, CPU platform, engine
hook, fused statistics, compat fixes), the SFT trainers in ``sft/``, the RL policy losses in ``rl/``.

The only package of ranktuner_verl that imports verl.
"""

from pathlib import Path

#: The trainers' Hydra configs (``sft.yaml``, ``ppo.yaml``, the ``loss`` group); the top-level configs/ links here.
CONFIGS = str(Path(__file__).resolve().parent / "configs")
