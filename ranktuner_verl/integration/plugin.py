"""The ``verl.plugins`` entry point: ``import verl`` loads this module in every process (torchrun ranks, Ray workers).

It installs the CPU platform where no accelerator is in reach (``platform_cpu``), the engine hook that computes our
token statistics (``engine_hook``), the token-weighted policy losses (``policy_loss``), the fixes in ``compat`` and,
where the CPU platform is active, what verl's PPO trainer needs there (``rl.on_cpu``: the ``hf`` rollout).
Only the CPU platform acts at once; the hook, the policy losses and the fixes wait until verl imports the module they
patch (``on_import``), so ``import verl`` loads nothing more than this package's few modules. verl swallows
entry-point errors (DEBUG log only), so our trainers call ``activation.require()``, which fails loudly if the plugin
is not active.
"""

from ranktuner_verl.integration import compat, engine_hook, platform_cpu
from ranktuner_verl.integration.on_import import when_imported
from ranktuner_verl.integration.rl import on_cpu as rl_on_cpu


def _register_policy_losses(_core_algos) -> None:
    from ranktuner_verl.integration.rl import policy_loss

    policy_loss.register()


if platform_cpu.install():
    rl_on_cpu.install()  # verl's PPO/GRPO trainer on a CPU: the hf rollout, a Ray resource check counting CPUs
engine_hook.install()
compat.install()
when_imported("verl.trainer.ppo.core_algos", _register_policy_losses)
