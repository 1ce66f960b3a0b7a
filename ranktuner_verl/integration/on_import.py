"""Run a function when a module gets imported, or now if it already is: how the plugin patches verl lazily.

``import verl`` loads our plugin in every process (the ``verl.plugins`` entry point), so whatever the plugin imports,
every verl process imports too. Importing verl's engine there to patch it would load ~1,000 modules, print verl's
"engine is not available" warnings and leave ``TORCH_CUDA_ARCH_LIST`` set in processes that never build an engine.
Instead, register the patch for the module that defines what it patches::

    from ranktuner_verl.integration.on_import import when_imported

    def register_my_policy_loss(core_algos):          # gets the module object, once it is fully executed
        core_algos.register_policy_loss("mine")(my_policy_loss)

    when_imported("verl.trainer.ppo.core_algos", register_my_policy_loss)

``func(module)`` runs right after the module's code has run, before the ``import`` statement that loaded it returns,
in whichever process imports it (Ray workers included, as they load the plugin with verl). If the module is already
imported, ``func`` runs at once. Each registration runs once (functions registered for one module run in
registration order; registering the same function twice before the import runs it once). Name the module that
defines the object you patch (a submodule, not its package, which may still be half-initialised). An exception in
``func`` is logged and the import goes on: a broken patch must not break a stock verl job; check for the patch's
effect where you need it (``activation.require`` does, for the engine hook).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType

logger = logging.getLogger(__name__)

_pending: dict[str, list[Callable[[ModuleType], None]]] = {}  # module name -> functions still to run
_lock = threading.RLock()


def when_imported(name: str, func: Callable[[ModuleType], None]) -> None:
    """Call ``func(module)`` once the module ``name`` is imported: now if it already is, else right after its import."""
    with _lock:
        module = sys.modules.get(name)
        if module is not None and _initialising(module):
            raise RuntimeError(
                f"when_imported({name!r}, ...) was called while {name} is itself being imported (a circular import), "
                "so its end cannot be watched: register the function earlier, or for the submodule that defines "
                "what it patches."
            )
        if module is None:
            funcs = _pending.setdefault(name, [])
            if func not in funcs:
                funcs.append(func)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    _run(name, module, [func])


def _initialising(module: ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(spec is not None and getattr(spec, "_initializing", False))


def _run(name: str, module: ModuleType, funcs) -> None:
    for func in funcs:
        try:
            func(module)
        except Exception:  # noqa: BLE001  (see the module docstring)
            logger.exception("ranktuner_verl: %s failed after importing %s", getattr(func, "__qualname__", func), name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module it takes the spec the other finders give and wraps its loader."""

    def __init__(self):
        self._finding = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _pending or getattr(self._finding, "name", None) == fullname:
            return None
        self._finding.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders (this one answers None while it asks)
        finally:
            self._finding.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader)
        return spec


class _HookedLoader(importlib.abc.Loader):
    """The module's own loader; after ``exec_module`` it puts that loader back and runs the pending functions."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        with _lock:
            funcs = _pending.pop(module.__name__, [])
        _run(module.__name__, module, funcs)

    def __getattr__(self, name):
        return getattr(self._loader, name)


_FINDER = _Finder()
