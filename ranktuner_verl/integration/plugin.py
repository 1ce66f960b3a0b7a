"""The ``verl.plugins`` entry point: ``import verl`` loads this module in every process (torchrun ranks, Ray workers).

It installs the CPU platform when no accelerator is present (``platform_cpu``), the engine hook that computes our
token statistics (``engine_hook``) and the fixes in ``compat``. verl swallows entry-point errors (DEBUG log only),
so our trainers call ``require()``, which fails loudly if the plugin is not active.
"""

from ranktuner_verl.integration import compat, engine_hook, platform_cpu

CPU_PLATFORM_ACTIVE = platform_cpu.install()
engine_hook.install()
compat.tolerate_trl_without_value_head()


def require() -> None:
    """Raise unless the plugin is active in this process (it is a no-op when it is)."""
    if not engine_hook.is_installed():
        raise RuntimeError(
            "The ranktuner_verl verl plugin is not active: the engine hook is missing. Reinstall the package "
            "(pip install -e .) so the 'verl.plugins' entry point is registered, and do not exclude it with "
            "VERL_USE_EXTERNAL_PLUGINS."
        )
