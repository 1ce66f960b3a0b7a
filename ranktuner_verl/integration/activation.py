"""Whether the plugin is active: in this process (``require``) and in processes that only import verl
(``loads_with_verl``, for Ray workers). Apart from ``plugin`` so that what the plugin installs can ask it."""

import os

from ranktuner_verl.integration import engine_hook

PLUGIN_MODULE = "ranktuner_verl.integration.plugin"  # what VERL_USE_EXTERNAL_MODULES may name
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
            f"point is missing). Unset VERL_USE_EXTERNAL_PLUGINS, add {ENTRY_POINT!r} to it, or add "
            f"{PLUGIN_MODULE!r} to "
            "VERL_USE_EXTERNAL_MODULES; and install the package (pip install -e .) on every node."
        )


def loads_with_verl() -> bool:
    """Whether a process that only runs ``import verl`` loads this plugin (verl 0.9.1's rules in verl/__init__.py)."""
    from importlib.metadata import entry_points

    if PLUGIN_MODULE in {name.strip() for name in os.getenv("VERL_USE_EXTERNAL_MODULES", "").split(",")}:
        return True
    policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if policy == "none":
        return False
    registered = any(ep.name == ENTRY_POINT for ep in entry_points(group="verl.plugins"))
    return registered and (policy == "auto" or ENTRY_POINT in {name.strip() for name in policy.split(",")})
