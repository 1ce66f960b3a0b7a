"""A readable run log: what every process of a run would print alike, once; verl's full config in a file.

- ``prints_notices``: only one process of a run prints the notices every process would repeat (the CPU platform's,
  verl's "<name> engine is not available" warnings about optional engines): torchrun's rank 0, a Ray driver or worker
  of rank 0, a process outside both. The start-up checks (``checks.main``, run once by ``scripts/train.sh`` before
  the ranks) and a cluster submission (``cluster``) print none, so a rejected input prints its one-line error alone.
- ``config_to_file``: verl's SFT trainers print their whole config as one line (6,000+ characters); ours write it to
  ``trainer_config.yaml`` in Hydra's output folder of the run and print that path.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import warnings

CONFIG_FILE = "trainer_config.yaml"
VERL_ENGINE_WARNINGS = r"\w+ engine is not available"  # verl/workers/engine/__init__.py, on import, per process
_silent = {"on": False}


def no_notices_here() -> None:
    """This process only checks or submits: it prints no notice (call before verl is imported)."""
    _silent["on"] = True


def prints_notices() -> bool:
    return not _silent["on"] and os.environ.get("RANK", "0") == "0"


def quiet_verl_engine_warnings() -> None:
    """In a process that prints no notices, hide verl's warnings about its optional engines (torchtitan, veomni,
    megatron, ...): they come again from every process. Call before verl's engine package is imported."""
    if not prints_notices():
        warnings.filterwarnings("ignore", message=VERL_ENGINE_WARNINGS, category=UserWarning)


@contextlib.contextmanager
def config_to_file(verl_module):
    """While verl's trainer in ``verl_module`` is built: its ``print(config)`` writes the config to ``CONFIG_FILE`` in
    Hydra's output folder and prints that path instead (outside a Hydra app, or where the file cannot be written,
    verl prints it as it does)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    folder = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None

    def print_(*args, **kwargs):
        if folder is None or len(args) != 1 or not isinstance(args[0], DictConfig):
            return builtins.print(*args, **kwargs)
        path = os.path.join(folder, CONFIG_FILE)
        try:
            os.makedirs(folder, exist_ok=True)  # a Ray job's working-directory copy may have lost it
            with open(path, "w") as f:
                f.write(OmegaConf.to_yaml(args[0], resolve=True))
        except OSError:
            return builtins.print(*args, **kwargs)
        builtins.print(f"verl's full config: {path}", flush=True)

    verl_module.print = print_  # module globals come before builtins: only verl's trainer module sees it
    try:
        yield
    finally:
        del verl_module.print
