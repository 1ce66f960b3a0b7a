"""Token weights inside verl's PPO/GRPO policy loss: ``actor_rollout_ref.actor.policy_loss.loss_mode=ranktuner``.

    L = agg( sg(w_t) * rho_t * clip_surrogate_t(ratio_t, A_t) )        (docs/rl.md)

with rho_t verl's rollout importance weight (``rollout_is_weights``, 1 when off) and w_t a registry method's weight
(``ranktuner_verl.methods``; RankTuner: Yu et al., arXiv 2602.01745) or the high-entropy minority mask (keep the
top-rho entropy quantile of the response tokens: Wang et al., arXiv 2506.01939), computed from the statistics the
engine hook computes in the same forward as ``log_prob`` (same logits, same temperature), p_t included: the weights
never read verl's ``log_prob``, which is bf16 where verl's log-softmax runs in bf16. The product w_t * rho_t (fp32)
goes to the wrapped base policy loss (``base_loss``, verl's ``vanilla`` by default) as its per-token
``rollout_is_weights``: every base listed multiplies its per-token loss by it and by nothing else, so the KL and
entropy terms of ``ppo_loss`` are untouched. Options: ``policy_loss.token_weight.*`` (``OPTIONS`` and the method's
own parameters), validated when the actor config is built (``TokenWeightedPolicyLossConfig``), before the model loads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from verl.workers.config import PolicyLossConfig

from ranktuner_verl.integration import engine_hook
from ranktuner_verl.methods import METHODS, Param, get_method
from ranktuner_verl.weighted_nll import weight_metrics

HIGH_ENTROPY = "high_entropy"  # the top-rho entropy mask (Wang et al. 2025, "Beyond the 80/20 rule")


def weighted_modes() -> tuple[str, ...]:
    """The loss modes that weight the surrogate by a method: every method of the registry but those without a
    signal (sft: w_t = 1 would be vanilla itself)."""
    return tuple(name for name, spec in METHODS.items() if spec.family != "no signal")


def loss_modes() -> tuple[str, ...]:
    """Every loss mode this module registers with verl."""
    return (*weighted_modes(), HIGH_ENTROPY)

#: verl 0.9.1 policy losses that multiply their per-token loss by rollout_is_weights (core_algos.py), so they compose.
BASE_LOSSES = ("vanilla", "dppo_tv", "dppo_kl", "gspo", "sapo", "gpg", "clip_cov", "kl_cov", "dro", "cispo")

#: options shared by every mode (the method's own parameters come from its registry entry).
OPTIONS = {
    "base_loss": Param("vanilla", choices=BASE_LOSSES),
    "apply_to": Param("both", choices=("both", "positive", "negative")),  # tokens by the sign of their advantage
    # w <- w / mean(w) over the micro-batch's weighted tokens, after the clamp: the update keeps vanilla's scale
    # (docs/rl.md, "Measured": unnormalised, the default ranktuner weights up to doubled the gradient norm)
    "mean_one": Param(True, choices=(False, True)),
    "clamp_min": Param(0.0, low=0.0),
    "clamp_max": Param(2.0, low=0.0, low_open=True),
}
#: RL defaults that differ from SFT's: base p would suppress exactly the sampled low-probability tokens that
#: carry the exploration signal (docs/rl.md).
RL_METHOD_DEFAULTS = {"ranktuner": {"base": "one"}}
HIGH_ENTROPY_PARAMS = {"rho": Param(0.2, low=0.0, low_open=True, high=1.0)}
#: shared options whose default differs by mode: the high-entropy mask keeps its definition (1 on the kept tokens,
#: 0 elsewhere) unless asked.
MODE_OPTION_DEFAULTS = {HIGH_ENTROPY: {"mean_one": False}}

#: model_output statistics waiting for the policy loss of the same micro-batch, keyed by id(actor config).
_HANDOFF: dict[int, dict[str, torch.Tensor]] = {}


@dataclass(frozen=True)
class TokenWeightOptions:
    """Validated ``token_weight`` options of one loss mode."""

    mode: str
    method: Any  # ranktuner_verl.methods.Method, or None for the high-entropy mask
    rho: float | None
    base_loss: str
    apply_to: str
    mean_one: bool
    clamp_min: float
    clamp_max: float

    @property
    def engine_stat_names(self) -> frozenset[str]:
        return frozenset({"entropy"}) if self.method is None else frozenset(self.method.needs)

    @property
    def stat_kwargs(self) -> dict:
        return {} if self.method is None else dict(self.method.stat_kwargs)


def parse_options(loss_mode: str, token_weight: dict | None) -> TokenWeightOptions:
    """``token_weight`` (None values = defaults) for ``loss_mode``; a ValueError lists the valid values."""
    if loss_mode not in loss_modes():
        raise ValueError(f"policy_loss.loss_mode={loss_mode!r} is not a token-weighted mode; valid: {loss_modes()}")
    given = {k: v for k, v in dict(token_weight or {}).items() if v is not None}
    method_params = HIGH_ENTROPY_PARAMS if loss_mode == HIGH_ENTROPY else METHODS[loss_mode].params
    unknown = given.keys() - OPTIONS.keys() - method_params.keys()
    if unknown:
        valid = {**OPTIONS, **method_params}
        raise ValueError(
            f"policy_loss.loss_mode={loss_mode}: unknown token_weight option(s) {sorted(unknown)}; valid: "
            + ", ".join(f"{k} ({p.describe()}, default {p.default!r})" for k, p in valid.items())
        )
    where = f"policy_loss.loss_mode={loss_mode}: token_weight"
    defaults = {k: p.default for k, p in OPTIONS.items()} | MODE_OPTION_DEFAULTS.get(loss_mode, {})
    shared = {k: p.check(where, k, given.get(k, defaults[k])) for k, p in OPTIONS.items()}
    if shared["clamp_min"] > shared["clamp_max"]:
        raise ValueError(f"{where}: clamp_min={shared['clamp_min']} exceeds clamp_max={shared['clamp_max']}")
    own = {k: given[k] for k in method_params if k in given}
    if loss_mode == HIGH_ENTROPY:
        rho = HIGH_ENTROPY_PARAMS["rho"].check(where, "rho", own.get("rho", HIGH_ENTROPY_PARAMS["rho"].default))
        return TokenWeightOptions(loss_mode, None, rho, **shared)
    method = get_method(loss_mode, **{**RL_METHOD_DEFAULTS.get(loss_mode, {}), **own})
    return TokenWeightOptions(loss_mode, method, None, **shared)


def options_of(policy_loss) -> TokenWeightOptions:
    """The options of a built ``PolicyLossConfig`` (ours has ``token_weight``; verl's own means all defaults), parsed
    once per distinct setting: the engine hook and the loss ask for them every micro-batch."""
    given = dict(getattr(policy_loss, "token_weight", None) or {})
    try:
        return _parsed_options(policy_loss.loss_mode, tuple(sorted(given.items())))
    except TypeError:  # an unhashable value: parse_options names the problem
        return parse_options(policy_loss.loss_mode, given)


@functools.lru_cache(maxsize=64)
def _parsed_options(loss_mode: str, token_weight: tuple) -> TokenWeightOptions:
    return parse_options(loss_mode, dict(token_weight))


@dataclass
class TokenWeightedPolicyLossConfig(PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus ``token_weight`` (docs/rl.md), checked as soon as the actor config is built."""

    token_weight: dict = field(default_factory=dict)

    def __post_init__(self):
        check_loss_mode(self.loss_mode)
        if self.loss_mode in loss_modes():
            options_of(self)
        elif any(v is not None for v in dict(self.token_weight or {}).values()):
            raise ValueError(
                f"policy_loss.token_weight is set but policy_loss.loss_mode={self.loss_mode!r} ignores it "
                f"(if rollout correction's bypass mode replaced the loss mode, turn bypass off); use one of "
                f"{loss_modes()}"
            )


@dataclass(frozen=True)
class _Request:
    """The engine hook's ``StatsRequest`` of an actor config whose loss mode is ours."""

    engine_stat_names: frozenset[str]
    stat_kwargs: dict
    key: int
    response_only: bool = True

    def deliver(self, model_output, micro_batch) -> None:
        from verl.workers.utils.padding import no_padding_2_padding

        _HANDOFF[self.key] = {name: no_padding_2_padding(model_output[engine_hook.stat_key(name)], micro_batch)
                              for name in self.engine_stat_names}


def _request_for(config) -> _Request:
    options = options_of(config.policy_loss)
    return _Request(options.engine_stat_names, options.stat_kwargs, id(config))


def token_weights(options: TokenWeightOptions, stats: dict, log_prob, advantages, response_mask) -> torch.Tensor:
    """Detached w_t [bsz, response_len]: 1 outside the weighted tokens (response_mask and the ``apply_to`` sign)."""
    selected = response_mask.bool()
    if options.apply_to == "positive":
        selected = selected & (advantages > 0)
    elif options.apply_to == "negative":
        selected = selected & (advantages < 0)
    weights = torch.ones_like(log_prob, dtype=torch.float32)
    if not selected.any():
        return weights
    picked = {name: value[selected] for name, value in stats.items()}
    if options.method is None:  # keep the top-rho entropy quantile (Wang et al. 2025)
        entropy = picked["entropy"].float()
        w = (entropy >= torch.quantile(entropy, 1.0 - options.rho)).float()
    else:
        w = options.method.weights(picked)  # p_t from the engine's fp32 statistics, not verl's log_prob
    w = w.clamp(options.clamp_min, options.clamp_max)
    if options.mean_one:
        w = w / w.mean().clamp(min=torch.finfo(torch.float32).tiny)
    weights[selected] = w
    return weights.detach()


def weighted_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                         config=None, rollout_is_weights=None):
    """A verl policy loss (``core_algos.PolicyLossFn``): the base loss with w_t * rho_t as its per-token weights."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    options = options_of(config.policy_loss)
    stats = _HANDOFF.pop(id(config), None)
    if stats is None or any(value.shape != log_prob.shape for value in stats.values()):
        raise RuntimeError(
            f"policy_loss.loss_mode={options.mode} needs the token statistics "
            f"{sorted(options.engine_stat_names)} from the actor's forward, which the engine did not compute: the "
            "ranktuner_verl engine hook is not active in this worker (install the package on every node; "
            "VERL_USE_EXTERNAL_PLUGINS must allow 'ranktuner_verl'), or the actor does not run verl's FSDP engine "
            "(actor_rollout_ref.actor.strategy must be fsdp or fsdp2, with verl's own actor worker, "
            "verl.workers.engine_workers, whose engine is FSDPEngineWithLMHead)."
        )
    weights = token_weights(options, stats, log_prob, advantages, response_mask)
    combined = weights if rollout_is_weights is None else weights * rollout_is_weights
    loss, metrics = get_policy_loss_fn(options.base_loss)(
        old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages, response_mask=response_mask,
        loss_agg_mode=loss_agg_mode, config=config, rollout_is_weights=combined,
    )
    return loss, {**metrics, **actor_metrics(weights, stats, response_mask)}


def actor_metrics(weights, stats, response_mask) -> dict[str, float]:
    """actor/weight_{mean,p10,p50,p90,gt1} over the response tokens (``weighted_nll.weight_metrics``: the names SFT
    logs under train/) and actor/token_stat_<name> means (verl averages them over the micro-batches of a step)."""
    mask = response_mask.bool()
    if not mask.any():
        return {}
    metrics = {f"actor/{name}": value for name, value in weight_metrics(weights[mask]).items()}
    metrics.update({f"actor/token_stat_{name}": value[mask].double().mean().item() for name, value in stats.items()})
    return metrics


def register() -> None:
    """Register every mode with verl's policy-loss registry and the engine hook (idempotent). Refuses to replace a
    policy loss of the same name that is not ours."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss

    for mode in loss_modes():
        existing = POLICY_LOSS_REGISTRY.get(mode)
        if existing is not None and existing is not weighted_policy_loss:
            raise RuntimeError(f"verl already has a policy loss named {mode!r}; ranktuner_verl will not replace it")
        register_policy_loss(mode)(weighted_policy_loss)
        engine_hook.register_policy_loss_request(mode, _request_for)


def check_loss_mode(loss_mode: str) -> None:
    """A ValueError unless ``loss_mode`` is a registered policy loss (verl's own or this plugin's), listing both: verl
    itself would only fail at the first actor update, after the rollout."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    ours = loss_modes()
    if loss_mode not in POLICY_LOSS_REGISTRY and loss_mode not in ours:  # ours unregistered: check_ppo_config
        verls = sorted(set(POLICY_LOSS_REGISTRY) - set(ours))
        raise ValueError(f"policy_loss.loss_mode={loss_mode!r} is not a policy loss; valid: verl's "
                         f"{', '.join(verls)}; ranktuner_verl's {', '.join(ours)}")


def check_ppo_config(config) -> None:
    """Start-up checks of a composed PPO config (``configs/ppo.yaml``): the loss mode exists; and where it is ours,
    the options and what would silently or late defeat the weights."""
    actor = config.actor_rollout_ref.actor
    mode = actor.policy_loss.loss_mode
    check_loss_mode(mode)
    if mode not in loss_modes():
        return
    parse_options(mode, actor.policy_loss.get("token_weight"))
    problems = []
    if actor.strategy not in ("fsdp", "fsdp2"):
        problems.append(f"actor_rollout_ref.actor.strategy={actor.strategy}: the statistics are computed in verl's "
                        "FSDP engine only; use fsdp or fsdp2")
    from ranktuner_verl.integration.fused_stats import unsupported_backend

    model = config.actor_rollout_ref.model
    fused_problem = unsupported_backend(model.get("use_fused_kernels", False), model.get("fused_kernel_options"))
    if fused_problem:  # torch and liger run: the statistics come from the hidden states (fused_stats)
        problems.append(f"actor_rollout_ref.{fused_problem}")
    # verl's deprecated v0 trainer (ray_trainer.apply_bypass_mode) swaps the loss mode for 'bypass_mode'; the v1
    # trainer (the default) only takes old_log_probs from the rollout and keeps the loss mode
    bypass = config.get("algorithm", {}).get("rollout_correction", {}).get("bypass_mode", False)
    if bypass and not config.get("trainer", {}).get("use_v1", True):
        problems.append("algorithm.rollout_correction.bypass_mode=True with trainer.use_v1=False: verl's v0 trainer "
                        "replaces policy_loss.loss_mode with 'bypass_mode' (the weights would be dropped); use the v1 "
                        "trainer (trainer.use_v1=True, the default), which keeps the loss mode, or bypass_mode=False")
    if problems:
        raise ValueError(f"policy_loss.loss_mode={mode}: " + "; ".join(problems))
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    from ranktuner_verl.integration import activation

    activation.require(for_workers=True)
    if POLICY_LOSS_REGISTRY.get(mode) is not weighted_policy_loss:
        raise RuntimeError(f"policy_loss.loss_mode={mode} is not registered with verl: the ranktuner_verl plugin "
                           "did not load (pip install -e . on every node)")
