"""A CPU platform for verl 0.9.1, so its real SFT trainers run on a machine with no accelerator.

verl resolves one platform singleton (``verl.plugin.platform.get_platform``) and asks it for the device name, the
``torch.<device>`` module, the collective backend and the Ray resource. Without an accelerator it falls back to
NVIDIA and asks for NCCL. ``install()`` registers a ``cpu`` platform and makes it current, registers verl's FSDP
engines for device ``cpu``, and makes verl's process-group initialisers use gloo alone (verl builds
``"cpu:gloo,<device>:<backend>"``, which torch rejects when both halves are gloo). See docs/VERL_NOTES.md.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager, nullcontext
from types import ModuleType

import torch


def accelerator_present() -> bool:
    """True when torch sees CUDA (NVIDIA or ROCm) or an Ascend NPU: the CPU layer then stays out of the way."""
    if torch.cuda.is_available():
        return True
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


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
            return not accelerator_present()

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


def _patch_process_group_init() -> None:
    """Route verl's two process-group initialisers through ``_gloo_only`` (they build the backend string inline)."""
    import torch.distributed as dist
    import verl.utils.distributed as verl_dist

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


def _register_cpu_engines() -> None:
    """Register verl's FSDP engines (LM head and value head) for device ``cpu``; FSDP2 runs on CPU tensors."""
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
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


def _patch_sdpa_for_ulysses() -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if not getattr(ALL_ATTENTION_FUNCTIONS["sdpa"], "_ranktuner_ulysses", False):
        ALL_ATTENTION_FUNCTIONS["sdpa"] = _ulysses_sdpa(ALL_ATTENTION_FUNCTIONS["sdpa"])


def install() -> bool:
    """Make verl run on CPU when no accelerator is present. Idempotent; returns True when the CPU layer is active.

    ``RANKTUNER_VERL_CPU=0`` keeps it off, ``=1`` forces it on (e.g. to test the CPU path on a GPU machine).
    """
    choice = os.environ.get("RANKTUNER_VERL_CPU", "auto").strip().lower()
    if choice in ("0", "false", "off") or (choice == "auto" and accelerator_present()):
        return False
    from verl.plugin import platform as verl_platform
    from verl.plugin.platform import platform_manager

    platform_cls = _platform_class()
    current = platform_manager._current_platform
    if current is None or current.device_name != "cpu":
        verl_platform.set_platform(platform_cls())
    _patch_process_group_init()
    _register_cpu_engines()
    _patch_sdpa_for_ulysses()
    return True
