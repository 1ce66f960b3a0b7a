"""Fixes for verl 0.9.1 against the libraries around it, applied by the plugin (each one says why)."""

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
