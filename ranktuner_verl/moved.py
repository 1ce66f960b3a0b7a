"""Module paths that moved, so that an old ``python -m`` or import fails naming the new path instead of a bare
"No module named". Installed last on ``sys.meta_path`` by ``ranktuner_verl/__init__.py``: it answers only names
that no file provides."""

from __future__ import annotations

import sys

#: old module -> new module (the layout of stats/, bench/, integration/{sft,rl}/).
MOVED = {
    "ranktuner_verl.loss": "ranktuner_verl.weighted_nll",
    "ranktuner_verl.stats_hidden": "ranktuner_verl.stats.hidden",
    "ranktuner_verl.gpu_check": "ranktuner_verl.bench.gpu_check",
    "ranktuner_verl.data.confident": "ranktuner_verl.diagnostics.confident",
    "ranktuner_verl.integration.checkpoints": "ranktuner_verl.checkpoints",
    "ranktuner_verl.integration.bench_trainer": "ranktuner_verl.bench.trainer",
    "ranktuner_verl.integration.bench_fused": "ranktuner_verl.bench.fused",
    "ranktuner_verl.integration.bench_rl": "ranktuner_verl.bench.rl",
    "ranktuner_verl.integration.trainer_ppo": "ranktuner_verl.integration.rl.trainer",
    "ranktuner_verl.integration.policy_loss": "ranktuner_verl.integration.rl.policy_loss",
    "ranktuner_verl.integration.actor_step": "ranktuner_verl.integration.rl.actor_step",
    **{f"ranktuner_verl.integration.{name}": f"ranktuner_verl.integration.sft.{name}"
       for name in ("trainer", "trainer_ray", "checks", "loss", "checkpoint_guard", "cluster", "runs")},
}


class MovedModuleFinder:
    """A meta-path finder that refuses a moved module with its new path."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in MOVED:
            raise ModuleNotFoundError(f"{name} has moved to {MOVED[name]}: run `python -m {MOVED[name]}` or import "
                                      f"it from there", name=name)
        return None


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
