"""The ``verl.plugins`` entry point: ``import verl`` loads this module in every process (torchrun ranks, Ray workers).

It installs the CPU platform where no accelerator is in reach (``platform_cpu``), the engine hook that computes our
token statistics (``engine_hook``), the token-weighted policy losses (``policy_loss``) and the fixes in ``compat``.
Only the CPU platform acts at once; the hook, the policy losses and the fixes wait until verl imports the module they
patch (``on_import``), so ``import verl`` loads nothing more than this package's few modules. verl swallows
entry-point errors (DEBUG log only), so our trainers call ``require()``, which fails loudly if the plugin is not
active.
"""

import os

from ranktuner_verl.integration import compat, engine_hook, platform_cpu
from ranktuner_verl.integration.on_import import when_imported


def _register_policy_losses(_core_algos) -> None:
    from ranktuner_verl.integration import policy_loss

    policy_loss.register()


platform_cpu.install()
engine_hook.install()
compat.install()
when_imported("verl.trainer.ppo.core_algos", _register_policy_losses)


ENTRY_POINT = "ranktuner_verl"  # our name in the "verl.plugins" group (pyproject.toml)


def require(for_workers: bool = False) -> None:
    """Raise unless the plugin is active in this process and, with ``for_workers``, will also load in processes that
    only import verl (Ray workers: they get it from the entry point, which VERL_USE_EXTERNAL_PLUGINS can exclude)."""
    if not engine_hook.is_installed():
        raise RuntimeError(
            "The ranktuner_verl verl plugin is not active: the engine hook is missing. Reinstall the package "
            "(pip install -e .) so the 'verl.plugins' entry point is registered."
        )
    if for_workers and not loads_with_verl():
        raise RuntimeError(
            "The Ray workers would not load the ranktuner_verl plugin: they import only verl, which loads it through "
            f"the 'verl.plugins' entry point, but VERL_USE_EXTERNAL_PLUGINS="
            f"{os.getenv('VERL_USE_EXTERNAL_PLUGINS')!r} excludes it (or the package is not installed, so the entry "
            f"point is missing). Unset VERL_USE_EXTERNAL_PLUGINS, add {ENTRY_POINT!r} to it, or add {__name__!r} to "
            "VERL_USE_EXTERNAL_MODULES; and install the package (pip install -e .) on every node."
        )


def loads_with_verl() -> bool:
    """Whether a process that only runs ``import verl`` loads this plugin (verl 0.9.1's rules in verl/__init__.py)."""
    from importlib.metadata import entry_points

    if __name__ in {name.strip() for name in os.getenv("VERL_USE_EXTERNAL_MODULES", "").split(",")}:
        return True
    policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if policy == "none":
        return False
    registered = any(ep.name == ENTRY_POINT for ep in entry_points(group="verl.plugins"))
    return registered and (policy == "auto" or ENTRY_POINT in {name.strip() for name in policy.split(",")})
