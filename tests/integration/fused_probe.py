"""Losses and gradients of every method and option on one batch, through verl's real trainer objects (a torchrun script).

    python -m torch.distributed.run --standalone --nproc_per_node=1 tests/integration/fused_probe.py OUT.pt \
        [--padded-too] OVERRIDES...

Builds ``RankTunerSFTTrainer`` from our Hydra config (dataset, FSDP engine, training worker: all verl's), takes the
first batch as ``fit`` does, then for each case of ``cases()`` sets the loss and runs the worker's real
``train_batch``: forward (with the engine hook, fused or not), loss, backward. Only the optimizer step is replaced by a
snapshot of the gradients, so every case sees the same weights. Rank 0 saves {case: {"loss", "grads"}} to OUT.pt.
"""

from __future__ import annotations

import sys

import torch


def cases() -> dict[str, tuple[str, dict, float]]:
    """label -> (method, params, temperature): every method with its defaults, then each other choice of each of its
    choice parameters (from the registry), and a temperature other than 1 for the methods that need statistics.
    Each case runs with remove-padding on, and, with ``--padded-too``, off as well (label + " padded")."""
    from ranktuner_verl.methods import METHODS, get_method

    out = {}
    for name, spec in METHODS.items():
        out[name] = (name, {}, 1.0)
        for param, rule in spec.params.items():
            for choice in rule.choices or ():
                if choice != rule.default:
                    out[f"{name} {param}={choice}"] = (name, {param: choice}, 1.0)
        if len(get_method(name).needs) > 1:
            out[f"{name} T=0.7"] = (name, {}, 0.7)
    return out


def main(out_path: str, overrides: list[str], padded_too: bool = False) -> None:
    from verl.utils import tensordict_utils as tu
    from verl.utils.distributed import destroy_global_process_group

    from ranktuner_verl.integration.sft.loss import WeightedSFTLoss
    from ranktuner_verl.integration.sft.runs import build_trainer, step_data

    trainer = build_trainer(overrides)
    engine, worker = trainer.engine, trainer.training_client
    batch = next(iter(trainer.train_dataloader))
    grads = {}

    def snapshot_instead_of_step():
        """The gradients as the optimizer would see them (DTensor shards gathered), then zeroed: no update."""
        for name, param in engine.module.named_parameters():
            grad = param.grad
            grads[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
        engine.optimizer_zero_grad()
        return 0.0

    engine.optimizer_step = snapshot_instead_of_step
    results = {}
    for label, (name, params, temperature) in cases().items():
        worker.set_loss_fn(loss_fn=WeightedSFTLoss(name, **params))
        for remove_padding in (True, False) if padded_too else (True,):
            grads.clear()
            output = worker.train_batch(step_data(trainer, batch, temperature=temperature,
                                                  use_remove_padding=remove_padding))
            if output is not None:
                results[label + ("" if remove_padding else " padded")] = {
                    "loss": float(tu.get(output, "metrics")["loss"]), "grads": dict(grads)}
    if torch.distributed.get_rank() == 0:
        torch.save(results, out_path)
    destroy_global_process_group()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], [a for a in args[1:] if a != "--padded-too"], padded_too="--padded-too" in args)
