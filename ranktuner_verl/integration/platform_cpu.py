"""A CPU platform for verl 0.9.1, so its real SFT trainers run on a machine with no accelerator.

verl resolves one platform singleton (``verl.plugin.platform.get_platform``) and asks it for the device name, the
``torch.<device>`` module, the collective backend and the Ray resource. Without an accelerator it falls back to
NVIDIA and asks for NCCL. Only where no accelerator is in reach (``accelerator_in_reach``), ``install()`` registers a
``cpu`` platform (never auto-detected) and makes it current, registers verl's FSDP engines for device ``cpu`` and
makes verl's process-group initialisers use gloo alone (verl builds ``"cpu:gloo,<device>:<backend>"``, which torch
rejects when both halves are gloo). See docs/verl_integration.md.
"""

from __future__ import annotations

import functools
import logging
import os
from contextlib import contextmanager, nullcontext
from types import ModuleType

import torch

from ranktuner_verl.integration import run_log
from ranktuner_verl.integration.engine_hook import ENGINE_MODULE
from ranktuner_verl.integration.on_import import when_imported


SWITCH = "RANKTUNER_VERL_CPU"  # "1": the CPU layer on, whatever is in reach; "0": off; unset/"auto": see install()
ACCELERATOR_RESOURCES = ("GPU", "NPU")  # Ray resources of verl's accelerator platforms (ray_resource_name)
_log = logging.getLogger(__name__)
_state = {"active": False}


def accelerator_in_reach() -> str | None:
    """Where this process can reach an accelerator, in words; None when nowhere, the only case the CPU layer is for.

    In reach: a device torch sees; an accelerator platform verl's own auto-detection finds (it runs ``nvidia-smi``,
    ``rocm-smi`` or imports ``torch_npu``, so it says "cuda" in a Ray actor with ``CUDA_VISIBLE_DEVICES=""`` on a
    GPU node); a platform named by ``VERL_PLATFORM``; and GPUs or NPUs in the Ray cluster this process is connected
    to (a driver or actor on a CPU head node).
    """
    if torch.cuda.is_available():
        return "torch sees a CUDA device"
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        return "torch sees an NPU"
    named = os.environ.get("VERL_PLATFORM", "").strip().lower()
    if named and named != "cpu":
        return f"VERL_PLATFORM={named}"
    from verl.plugin.platform import PlatformRegistry

    for name in PlatformRegistry.registered_names():
        if name == "cpu":
            continue
        try:
            if PlatformRegistry.get(name)().is_platform_available(use_smi_check=True):
                return f"verl's platform detection finds {name!r}"
        except Exception:  # noqa: BLE001  (verl's own detection skips such platforms the same way)
            continue
    return _ray_accelerators()


def _ray_accelerators() -> str | None:
    import ray

    if not ray.is_initialized():
        return None
    resources = ray.cluster_resources()
    found = {name: resources[name] for name in ACCELERATOR_RESOURCES if resources.get(name)}
    return f"the Ray cluster has {found}" if found else None


def active() -> bool:
    """Whether the CPU layer is active in this process."""
    return _state["active"]


class _CpuDeviceModule(ModuleType):
    """``torch.cpu`` plus the cuda-style calls verl makes on its device module, as no-ops or CPU equivalents."""

    def __init__(self):
        super().__init__("ranktuner_verl_cpu_device")

    def __getattr__(self, name):
        return getattr(torch.cpu, name)

    @staticmethod
    def current_device() -> str:
        return "cpu"  # verl calls tensor.to(get_device_id()); an int would mean cuda:<int>

    @staticmethod
    def set_device(_device=None) -> None:
        return None

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def get_device_name(_device=None) -> str:
        return "cpu"

    def empty_cache(self) -> None:
        return None

    ipc_collect = reset_peak_memory_stats = empty_cache

    @staticmethod
    def set_per_process_memory_fraction(_fraction, _device=None) -> None:
        return None

    @staticmethod
    def memory_allocated(_device=None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def mem_get_info(_device=None) -> tuple[int, int]:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page

    @staticmethod
    def get_rng_state(_device=None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state, _device=None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    @staticmethod
    def stream(_stream=None):
        return nullcontext()


CPU_DEVICE_MODULE = _CpuDeviceModule()


@functools.cache
def _platform_class():
    from verl.plugin.platform import PlatformBase, PlatformRegistry

    @PlatformRegistry.register(platform="cpu")
    class PlatformCPU(PlatformBase):
        """verl platform for plain CPUs: gloo collectives, Ray CPU bundles, no profiler."""

        device_name = "cpu"
        vendor_name = "cpu"
        device_module = CPU_DEVICE_MODULE

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check=False) -> bool:
            # never auto-detected: verl's detection still answers for the accelerators; install() picks this one
            return False

        def current_device(self):
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index) -> None:
            return None

        def synchronize(self, device_index=None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "RANKTUNER_VERL_VISIBLE_CPUS"  # nothing to hide on a CPU; a name no one else sets

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            # verl's placement bundle is {"CPU": max_colocate_count, <resource>: 1}: naming the resource "CPU"
            # turns it into one CPU per worker, which a laptop has.
            return "CPU"

        def ray_resource_options(self, num_gpus: float) -> dict:
            return {"num_cpus": num_gpus}

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self):
            return None

    return PlatformCPU


def _gloo_only(backend: str | None) -> str | None:
    """verl's ``"cpu:gloo,cpu:gloo"`` -> ``"gloo"`` (torch rejects a device named twice)."""
    if backend is not None and {part.strip() for part in backend.split(",")} == {"cpu:gloo"}:
        return "gloo"
    return backend


def _patch_process_group_init(verl_dist) -> None:
    """Route verl's two process-group initialisers through ``_gloo_only`` (they build the backend string inline)."""
    import torch.distributed as dist

    if getattr(verl_dist, "_ranktuner_cpu_patched", False):
        return
    original_init = dist.init_process_group

    def init_with_gloo(*args, **kwargs):
        kwargs["backend"] = _gloo_only(kwargs.get("backend"))
        return original_init(*args, **kwargs)

    for name in ("initialize_global_process_group", "initialize_global_process_group_ray"):
        verl_function = getattr(verl_dist, name)

        @functools.wraps(verl_function)
        def wrapper(*args, _verl_function=verl_function, **kwargs):
            dist.init_process_group = init_with_gloo
            try:
                return _verl_function(*args, **kwargs)
            finally:
                dist.init_process_group = original_init

        setattr(verl_dist, name, wrapper)
    verl_dist._ranktuner_cpu_patched = True


def _register_cpu_engines(transformer_impl) -> None:
    """Register verl's FSDP engines (LM head and value head) for device ``cpu``; FSDP2 runs on CPU tensors."""
    from verl.workers.engine.base import EngineRegistry

    if not active():
        return
    for model_type, engine in (("language_model", transformer_impl.FSDPEngineWithLMHead),
                               ("value_model", transformer_impl.FSDPEngineWithValueHead)):
        backends = EngineRegistry._engines.get(model_type, {})
        if "cpu" not in backends.get("fsdp2", {}):
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(engine)


def _ulysses_sdpa(sdpa):
    """SDPA with the Ulysses all-to-all that verl 0.9.1 puts only in its flash-attention patch (no flash-attn on CPU).

    A pass-through unless a Ulysses group of size > 1 is set: then (b, h, s/sp, d) shards become (b, h/sp, s, d),
    attention runs on the whole packed sequence (causal within each sequence; each restarts at position 0) and the
    output goes back to this rank's shard, as in ``verl.models.transformers.monkey_patch._ulysses_flash_attention_forward``.
    """
    from verl.utils import ulysses

    @functools.wraps(sdpa)
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        sp, position_ids = ulysses.get_ulysses_sequence_parallel_world_size(), kwargs.get("position_ids")
        if sp <= 1 or position_ids is None:
            return sdpa(module, query, key, value, attention_mask, *args, **kwargs)
        groups = query.size(1) // key.size(1)  # GQA: whole kv heads for every rank's query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        query, key, value = (ulysses.gather_seq_scatter_heads(x, seq_dim=2, head_dim=1) for x in (query, key, value))
        parts = [torch.empty_like(position_ids) for _ in range(sp)]
        torch.distributed.all_gather(parts, position_ids, group=ulysses.get_ulysses_sequence_parallel_group())
        seq = (torch.cat(parts, dim=-1) == 0).cumsum(-1)  # (1, s): which packed sequence each token is in
        causal = torch.ones(seq.size(-1), seq.size(-1), dtype=torch.bool, device=seq.device).tril()
        mask = ((seq[..., :, None] == seq[..., None, :]) & causal)[:, None]
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"))
        return ulysses.gather_heads_scatter_seq(out, seq_dim=2, head_dim=1).transpose(1, 2).contiguous(), None

    attention._ranktuner_ulysses = True
    return attention


def _patch_sdpa_for_ulysses(modeling_utils) -> None:
    attention_functions = modeling_utils.ALL_ATTENTION_FUNCTIONS
    if active() and not getattr(attention_functions["sdpa"], "_ranktuner_ulysses", False):
        attention_functions["sdpa"] = _ulysses_sdpa(attention_functions["sdpa"])


def install() -> bool:
    """Activate the CPU layer where no accelerator is in reach, or where ``RANKTUNER_VERL_CPU=1`` or
    ``VERL_PLATFORM=cpu`` asks for it, and log a warning saying so; returns ``active()``. Idempotent.

    The engine and attention patches wait for verl's engine and transformers' modeling code to be imported
    (``on_import``). A process that activates before it connects to Ray (a driver on a CPU head node) checks again
    once ``ray.init`` returns, and gives verl its own platform back if the cluster has GPUs or NPUs.
    """
    from verl.plugin import platform as verl_platform
    from verl.plugin.platform import platform_manager

    choice = os.environ.get(SWITCH, "auto").strip().lower()
    if choice in ("0", "false", "off"):
        return False
    asked = choice in ("1", "true", "on") or os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"
    if not asked and accelerator_in_reach() is not None:
        return False
    if not active() and run_log.prints_notices():
        _log.warning(
            "ranktuner_verl: no accelerator in reach of this process, so verl runs on the CPU platform this plugin "
            "adds (gloo, Ray CPU bundles). %s=0 turns it off, %s=1 forces it on.", SWITCH, SWITCH)
    _state["active"] = True
    current = platform_manager._current_platform
    if current is None or current.device_name != "cpu":
        verl_platform.set_platform(_platform_class()())
    when_imported("verl.utils.distributed", _patch_process_group_init)
    when_imported(ENGINE_MODULE, _register_cpu_engines)
    when_imported("transformers.modeling_utils", _patch_sdpa_for_ulysses)
    if not asked:
        _check_again_after_ray_init()
    return True


def _check_again_after_ray_init() -> None:
    import ray

    if ray.is_initialized() or getattr(ray.init, "_ranktuner_checks_again", False):
        return
    original = ray.init

    @functools.wraps(original)
    def init(*args, **kwargs):
        context = original(*args, **kwargs)
        ray.init = original
        reason = _ray_accelerators()
        if reason is not None and active():
            _deactivate(reason)
        return context

    init._ranktuner_checks_again = True
    ray.init = init


def _deactivate(reason: str) -> None:
    """Give verl its own platform back (it detects it again on the next ``get_platform``)."""
    from verl.plugin.platform import platform_manager

    _state["active"] = False
    if isinstance(platform_manager._current_platform, _platform_class()):
        platform_manager._current_platform = None
    _log.warning("ranktuner_verl: %s, so the CPU platform is off again: verl uses its own platform.", reason)
