"""The weighted SFT loss in verl's calling convention, and its per-step metrics.

    L = -sum_t sg(w_t) * log p_t * m_t / N_global * dp_size

with m_t the loss mask rolled left by one (aligned with the log-probs), N_global the supervised tokens of the whole
batch over all data-parallel ranks: exactly the normalisation of verl 0.9.1 ``verl.workers.utils.losses.sft_loss``
(verl PR #3994), so summing the micro-batch losses and averaging over ranks gives the global token mean.
w_t = ``method.weights(stats, mask)`` (docs/methods.md), from the engine hook's fp32 statistics of the same logits,
p_t included (verl's ``log_probs`` are bf16 where its log-softmax runs in bf16), and fp32 until it multiplies verl's
log p_t, which is the one differentiated. ``loss=sft`` has w_t = 1 and equals verl's loss exactly.
"""

from __future__ import annotations

import torch

from ranktuner_verl.integration.engine_hook import stat_key
from ranktuner_verl.weighted_nll import weight_metrics

# Per-micro-batch metric keys; the trainers reduce them to one value per step (``reduce_step_metrics``).
NLL_SUM, WEIGHTED_SUM, TOKENS, WEIGHTS, SCALES = (
    "ranktuner/nll_sum", "ranktuner/weighted_nll_sum", "ranktuner/tokens", "ranktuner/weights", "ranktuner/scales",
)
SUPERVISED_TOKENS = "train/supervised_tokens"  # the step's token count, logged by ``reduce_step_metrics``


class WeightedSFTLoss:
    """``loss_fn(model_output, data, dp_group) -> (loss, metrics)`` for verl's ``TrainingWorker.set_loss_fn``.

    Carries the method, so the engine hook (``engine_hook``) knows which statistics to compute: all the method
    needs, log_prob too (fp32, for the weights; verl's own, with grad, is the loss's), none for ``sft`` (w_t = 1).
    Picklable, so Ray ships it to the workers.
    """

    def __init__(self, name: str, chunk_rows: int | None = None, **params):
        from ranktuner_verl.methods import METHODS, get_method

        self.method = get_method(name, **params)
        # a method without a signal (sft: w_t = 1) reads no statistic
        self.engine_stat_names = frozenset(self.method.needs) if METHODS[name].family != "no signal" else frozenset()
        # under every fused-kernel backend; the others run under those whose LM head call the statistics share
        # (integration/fused_stats.py: impl_backend torch or liger)
        self.runs_fused = not self.engine_stat_names
        self.stat_kwargs = dict(getattr(self.method, "stat_kwargs", {}) or {})
        if chunk_rows is not None:  # rows of logits per statistics chunk (default: ranktuner_verl.stats)
            self.stat_kwargs["chunk_rows"] = int(chunk_rows)

    def __repr__(self) -> str:
        return f"WeightedSFTLoss({self.method.name}, {self.method.params})"

    def __call__(self, model_output, data, dp_group=None, config=None):
        from verl.utils import tensordict_utils as tu
        from verl.utils.dataset.dataset_utils import DatasetPadMode
        from verl.utils.torch_functional import masked_sum

        pad_mode = tu.get_non_tensor_data(data=data, key="pad_mode", default=DatasetPadMode.NO_PADDING)
        if pad_mode != DatasetPadMode.NO_PADDING:
            raise ValueError(f"loss={self.method.name} supports data.pad_mode=no_padding only, got {pad_mode}")
        log_prob = model_output["log_probs"].values()
        mask = torch.roll(data["loss_mask"].values(), shifts=-1, dims=0)  # align with log-probs, as sft_loss does
        stats = {"log_prob": log_prob.detach()}  # replaced below by the engine's fp32 log_prob but for sft
        for name in self.engine_stat_names:
            if stat_key(name) not in model_output:
                raise RuntimeError(
                    f"loss={self.method.name} needs the token statistic {name!r}, which the engine did not compute. "
                    "The ranktuner_verl engine hook is not active in this process: check that the package is "
                    "installed (pip install -e .) and that VERL_USE_EXTERNAL_PLUGINS allows 'ranktuner_verl'."
                )
            stats[name] = model_output[stat_key(name)].values()
        supervised = mask.bool()
        weights = self.method.weights(stats, mask=supervised).detach()  # fp32

        # same operations in the same order as sft_loss, so loss=sft matches it bit for bit; w_t * log p_t is fp32
        weighted = log_prob if not self.engine_stat_names else weights * log_prob
        loss = -masked_sum(weighted, mask) / data["batch_num_tokens"] * data["dp_size"]
        metrics = self._metrics(weights, supervised, stats, log_prob.detach())
        return loss, metrics

    def _metrics(self, weights, mask, stats, log_prob) -> dict:
        selected = weights[mask].float()
        metrics = {
            NLL_SUM: -log_prob[mask].double().sum().item(),
            WEIGHTED_SUM: -(weights * log_prob)[mask].double().sum().item(),
            TOKENS: int(mask.sum().item()),
            WEIGHTS: selected.cpu(),
        }
        if self.method.name == "ranktuner":
            from ranktuner_verl.methods import relative_scale

            metrics[SCALES] = relative_scale({k: v[mask] for k, v in stats.items()},
                                             **self.method.params).float().cpu()
        return metrics


def reduce_step_metrics(metrics: dict) -> dict:
    """Turn the micro-batch values of one step (nested lists over ranks and micro-batches) into logged scalars.

    weighted_loss and nll are global token means; the weight metrics (``weighted_nll.weight_metrics``, the names RL
    logs too) are over all supervised tokens of the step; ``s_near_one`` for RankTuner only.
    """
    if TOKENS not in metrics:
        return metrics
    raw = {key: _flatten(metrics.pop(key)) for key in (NLL_SUM, WEIGHTED_SUM, TOKENS, WEIGHTS, SCALES) if key in metrics}
    supervised = sum(raw[TOKENS])
    tokens = max(supervised, 1)
    scales = torch.cat(raw[SCALES]) if SCALES in raw else None
    summary = weight_metrics(torch.cat(raw[WEIGHTS]), scales)
    metrics.update({
        SUPERVISED_TOKENS: supervised,
        "train/weighted_loss": sum(raw[WEIGHTED_SUM]) / tokens,
        "train/nll": sum(raw[NLL_SUM]) / tokens,
        **{f"train/{name}": value for name, value in summary.items()},
    })
    return metrics


def take_nll_sums(metrics: dict) -> tuple[float, int]:
    """Remove the micro-batch NLL sums and token counts from ``metrics`` (validation); (0.0, 0) when absent."""
    if TOKENS not in metrics:
        return 0.0, 0
    return sum(_flatten(metrics.pop(NLL_SUM))), sum(_flatten(metrics.pop(TOKENS)))


def _flatten(value) -> list:
    if isinstance(value, list | tuple):
        return [item for part in value for item in _flatten(part)]
    return [value]
