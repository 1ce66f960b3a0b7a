"""The plugin leaves a stock verl job alone wherever an accelerator is in reach, and ``import verl`` stays light.

The cluster cases are simulated on this CPU machine: a GPU node seen from a CPU-only process (Ray's
``CUDA_VISIBLE_DEVICES=""`` in a ``num_gpus=0`` actor) is a fake ``nvidia-smi`` on PATH; a CPU head node of a GPU
cluster is a local Ray cluster declaring one GPU. Every case runs in a fresh process, with the plugin and without it
(``VERL_USE_EXTERNAL_PLUGINS=none``: stock verl), and compares what verl decides: its device name and the bundles of
its ``RayResourcePool`` placement groups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

STOCK = {"VERL_USE_EXTERNAL_PLUGINS": "none"}
ACTIVATED = "no accelerator in reach of this process"  # platform_cpu's warning
ENGINE_WARNING = "engine is not available"  # verl's, printed when its engine package is imported

IMPORT_VERL = """
import json, os, sys
before = dict(os.environ)
import verl
from verl.plugin.platform.platform_manager import _detect_platform_name
from verl.utils.device import get_device_name
print("RESULT " + json.dumps({
    "modules": sorted(sys.modules),
    "environ": {k: v for k, v in os.environ.items() if before.get(k) != v},
    "device": get_device_name(),
    "detected": _detect_platform_name(),
}))
"""

RAY_CLUSTER_WITH_ONE_GPU = """
import json, os, sys
import verl
import ray
from verl.single_controller.ray.base import RayResourcePool
from verl.utils.device import get_device_name

def bundles():
    pgs = RayResourcePool(process_on_nodes=[1], max_colocate_count=3).get_placement_groups(device_name=get_device_name())
    specs = [pg.bundle_specs for pg in pgs]
    for pg in pgs:
        ray.util.remove_placement_group(pg)
    return specs

@ray.remote(num_gpus=0)  # as verl's PPO TaskRunner: may land on the CPU head node
class CpuActor:
    def probe(self):
        import verl
        from verl.utils.device import get_device_name
        return {"device": get_device_name(), "bundles": bundles()}

# the driver on a CPU head node: the cluster it connects to declares a GPU
start = ray.init
ray.init = lambda *args, **kwargs: start(*args, num_cpus=4, num_gpus=1, include_dashboard=False, **kwargs)
out = {}
if sys.argv[1] == "ours":  # our SFT Ray driver, up to where it builds verl's trainer with its config
    from ranktuner_verl.integration.sft import trainer_ray

    class Capture:
        def __init__(self, config):
            out["config"] = {"device": config.trainer.device, "strategy": config.engine.strategy,
                             "attn": config.model.override_config.get("attn_implementation")}
        def fit(self):
            pass

    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=sys.argv[2], version_base=None):
        config = compose(config_name="sft", overrides=json.loads(sys.argv[3]))
    trainer_ray.RankTunerRaySFTTrainer = Capture
    trainer_ray.run(config)
else:
    ray.init()
out.update(driver=get_device_name(), bundles=bundles(), actor=ray.get(CpuActor.remote().probe.remote()))
print("RESULT " + json.dumps(out))
ray.shutdown()
"""


def start(script: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=full_env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[dict, str]:
    """The RESULT line's JSON and the process's stderr."""
    stdout, stderr = process.communicate(timeout=timeout)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, (stdout[-3000:], stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):]), stderr


@pytest.fixture(scope="module")
def fake_nvidia_smi(tmp_path_factory) -> dict:
    """PATH with an ``nvidia-smi`` that succeeds, and CUDA hidden as Ray hides it from a ``num_gpus=0`` actor."""
    bin_dir = tmp_path_factory.mktemp("bin")
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def imports(fake_nvidia_smi):
    """``import verl`` in fresh processes, all at once: {(who, where): (result, stderr)}, who = plugin, stock or the
    plugin with RANKTUNER_VERL_CPU=1, where = this CPU machine ("laptop") or a simulated GPU node."""
    who_env = {"plugin": {}, "stock": STOCK, "switch=1": {"RANKTUNER_VERL_CPU": "1"}}
    cases = [(who, where) for who in ("plugin", "stock") for where in ("laptop", "gpu node")]
    cases.append(("switch=1", "gpu node"))
    runs = {(who, where): start(IMPORT_VERL, env={**who_env[who], **(fake_nvidia_smi if where == "gpu node" else {})})
            for who, where in cases}
    return {key: finish(process) for key, process in runs.items()}


def test_import_verl_loads_only_our_modules_and_leaves_the_environment_as_stock(imports):
    """Not the engine (~1,000 modules, verl's "engine is not available" warnings, TORCH_CUDA_ARCH_LIST=8.0 left
    in os.environ where megatron is absent): the hook and fixes wait for the modules they patch."""
    (plugin, plugin_err), (stock, stock_err) = imports["plugin", "laptop"], imports["stock", "laptop"]
    extra = set(plugin["modules"]) - set(stock["modules"])
    assert extra and all(name.split(".")[0] == "ranktuner_verl" for name in extra), sorted(extra)
    assert set(stock["modules"]) <= set(plugin["modules"])
    assert "verl.workers.engine" not in plugin["modules"] and "transformers.modeling_utils" not in plugin["modules"]
    assert ENGINE_WARNING not in plugin_err and ENGINE_WARNING not in stock_err
    assert plugin["environ"] == stock["environ"] and "TORCH_CUDA_ARCH_LIST" not in plugin["environ"]


def test_on_a_machine_without_accelerator_the_cpu_layer_activates_and_says_so(imports):
    (plugin, plugin_err), (stock, stock_err) = imports["plugin", "laptop"], imports["stock", "laptop"]
    assert plugin["device"] == "cpu" and ACTIVATED in plugin_err
    assert stock["device"] == "cuda" and ACTIVATED not in stock_err  # verl's fallback, which needs NCCL


def test_on_a_gpu_node_a_process_without_cuda_gets_verls_cuda_platform_as_stock(imports):
    """A Ray actor with num_gpus=0 on a GPU node: verl's own detection runs nvidia-smi and says "cuda"."""
    (plugin, plugin_err), (stock, _) = imports["plugin", "gpu node"], imports["stock", "gpu node"]
    assert stock["device"] == "cuda" and stock["detected"] == "nvidia"
    assert plugin["device"] == "cuda" and plugin["detected"] == "nvidia"
    assert ACTIVATED not in plugin_err


def test_verls_platform_auto_detection_never_answers_cpu(monkeypatch):
    """The condition of verl's tests/plugin/test_platform_abstraction.py::TestPlatformDetection::
    test_empty_triggers_auto_detection, with our CPU platform registered (and active on this machine)."""
    import verl  # noqa: F401
    from verl.plugin.platform import PlatformRegistry
    from verl.plugin.platform import platform_manager

    from ranktuner_verl.integration import platform_cpu

    assert platform_cpu.install() == (platform_cpu.accelerator_in_reach() is None)
    platform_cpu._platform_class()  # registered wherever the CPU layer is active
    assert "cpu" in PlatformRegistry.registered_names()
    with mock.patch.dict(os.environ, {"VERL_PLATFORM": ""}):
        assert platform_manager._detect_platform_name() in ("nvidia", "huawei", "amd")


def test_the_switch_forces_the_cpu_layer_on_where_an_accelerator_is_in_reach(imports):
    """RANKTUNER_VERL_CPU=1 on the simulated GPU node: the CPU path, tested on a GPU machine."""
    on, on_err = imports["switch=1", "gpu node"]
    assert on["device"] == "cpu" and ACTIVATED in on_err


@pytest.fixture(scope="module")
def head_node(tiny):
    """The Ray script of a CPU head node, with our SFT Ray driver and with stock verl, both at once."""
    from ranktuner_verl.integration.sft import trainer
    from ranktuner_verl.integration.sft.runs import tiny_overrides

    config_dir = Path(trainer.__file__).parent / trainer.CONFIG_DIR
    overrides = tiny_overrides(tiny / "model", tiny / "train.parquet", tiny / "out", steps=1, batch=8)
    overrides.append("loss=ranktuner")
    runs = {who: start(RAY_CLUSTER_WITH_ONE_GPU, who, str(config_dir), json.dumps(overrides),
                       env=STOCK if who == "stock" else {}, cwd=tiny) for who in ("ours", "stock")}
    return {who: finish(process)[0] for who, process in runs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("who", ["ours", "stock"])
def test_on_a_cpu_head_node_of_a_gpu_cluster_driver_and_actors_ask_ray_for_gpus(head_node, who):
    """The driver activates the CPU layer (nothing in reach yet), then ``ray.init`` connects it to a cluster with a
    GPU: verl's placement groups ask for the GPU, as stock; a num_gpus=0 actor there says "cuda", as stock; our SFT
    Ray driver leaves trainer.device, the FSDP strategy and the attention of its GPU workers as configured."""
    result = head_node[who]
    assert result["driver"] == "cuda" and result["bundles"] == [[{"CPU": 3.0, "GPU": 1.0}]]
    assert result["actor"] == {"device": "cuda", "bundles": [[{"CPU": 3.0, "GPU": 1.0}]]}
    if who == "ours":
        assert result["config"] == {"device": "cuda", "strategy": "fsdp", "attn": None}
