"""The plugin without the engine hook: verl on CPU exactly as shipped, plus only what it needs to run there.

    VERL_USE_EXTERNAL_PLUGINS=none VERL_USE_EXTERNAL_MODULES=ranktuner_verl.integration.cpu_only \
        torchrun ... -m verl.trainer.sft_trainer ...

The tests use it as the "plugin not installed" baseline: a stock verl run must give the same losses with it as with
the full plugin.
"""

from ranktuner_verl.integration import compat, platform_cpu

platform_cpu.install()
compat.install()
