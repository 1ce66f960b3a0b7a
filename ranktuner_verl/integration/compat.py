"""Fixes for verl 0.9.1 against the libraries around it, applied by the plugin (each one says why), and the one place
that writes a private verl structure (``register_worker_rollout``)."""

from ranktuner_verl.integration.on_import import when_imported


def install() -> None:
    """Apply each fix when verl imports the module it fixes (``import verl`` alone loads none of them)."""
    when_imported("verl.models.transformers.monkey_patch", _tolerate_trl_without_value_head)


def _tolerate_trl_without_value_head(monkey_patch) -> None:
    """verl 0.9.1 patches TRL's ``AutoModelForCausalLMWithValueHead`` whenever TRL is installed, and so fails to load
    any model with TRL >= 1.x, which removed that class. Make that one check ask for the class, not the package."""

    def value_head_available() -> bool:
        try:
            from trl.experimental.ppo import AutoModelForCausalLMWithValueHead  # noqa: F401
        except ImportError:
            try:
                from trl import AutoModelForCausalLMWithValueHead  # noqa: F401
            except ImportError:
                return False
        return True

    monkey_patch.is_trl_available = value_head_available


def register_worker_rollout(rollout_base, name: str, class_path: str) -> None:
    """Register a rollout class for verl's trainer workers. verl 0.9.1 has a public registry for the driver side
    (``RolloutReplicaRegistry``) but the worker side is a private dict,
    ``verl.workers.rollout.base._ROLLOUT_REGISTRY = {(name, "async"): "module.Class"}``, read by
    ``get_rollout_class``; this is the one place that writes it. Raises if verl changed that dict."""
    registry = getattr(rollout_base, "_ROLLOUT_REGISTRY", None)
    if not isinstance(registry, dict) or ("vllm", "async") not in registry or not callable(
            getattr(rollout_base, "get_rollout_class", None)):
        raise RuntimeError(
            "verl.workers.rollout.base no longer has the worker rollout registry of verl 0.9.1 "
            "(_ROLLOUT_REGISTRY[(name, 'async')] = 'module.Class' and get_rollout_class): update "
            "ranktuner_verl.integration.compat.register_worker_rollout for this verl version.")
    registry[(name, "async")] = class_path
