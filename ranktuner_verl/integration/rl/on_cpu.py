"""What verl's PPO/GRPO trainer needs on a CPU, installed by the plugin only where the CPU platform is
active (no accelerator in reach): the ``hf`` rollout (``hf_rollout``) in verl's two rollout registries, and a Ray
resource check that counts CPUs. Like the rest of the plugin it waits until verl imports the module it patches.
"""

from __future__ import annotations

from ranktuner_verl.integration import compat
from ranktuner_verl.integration.on_import import when_imported

HF_ROLLOUT = "ranktuner_verl.integration.rl.hf_rollout"
NAME = "hf"  # actor_rollout_ref.rollout.name of the CPU rollout


def install() -> None:
    when_imported("verl.workers.rollout.replica", _register_replica)
    when_imported("verl.workers.rollout.base", _register_worker_rollout)
    when_imported("verl.single_controller.ray.base", _count_cpus_in_resource_check)


def _load_hf_replica():
    from ranktuner_verl.integration.rl.hf_rollout import HFReplica

    return HFReplica


def _register_replica(replica) -> None:
    replica.RolloutReplicaRegistry.register(NAME, _load_hf_replica)  # verl's public registry (driver side)


def _register_worker_rollout(rollout_base) -> None:
    compat.register_worker_rollout(rollout_base, NAME, f"{HF_ROLLOUT}.HFServerAdapter")


def _count_cpus_in_resource_check(ray_base) -> None:
    """verl's ``ResourcePoolManager._check_resource_available`` adds up the cluster's free GPUs (or NPUs) and fails
    when they are fewer than the worker processes asked for, so it always fails on a CPU-only cluster. While the CPU
    platform is active (each worker then takes one CPU), count free CPUs instead; otherwise verl's own check runs."""
    from ranktuner_verl.integration import platform_cpu

    manager = ray_base.ResourcePoolManager
    verl_check = manager._check_resource_available
    if getattr(verl_check, "_ranktuner_cpu", False):
        return

    def check_resource_available(self):
        if not platform_cpu.active():
            return verl_check(self)
        import ray

        free = sum(node.get("CPU", 0) for node in ray._private.state.available_resources_per_node().values())
        wanted = self.get_n_gpus()
        if free < wanted:
            raise ValueError(
                f"The Ray cluster has {free:g} free CPUs, fewer than the {wanted} worker processes asked for "
                "(trainer.n_gpus_per_node x trainer.nnodes; on the CPU platform each worker takes one CPU): ask for "
                "fewer workers, or give Ray more CPUs (ray_kwargs.ray_init.num_cpus).")

    check_resource_available._ranktuner_cpu = True
    manager._check_resource_available = check_resource_available
