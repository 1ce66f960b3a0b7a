"""GRPO end to end on a CPU: verl's real PPO trainer (v1, Ray, TransferQueue, agent loop, FSDP2 actor) with the
plugin's ``hf`` rollout on the copy3 toy task, for ``vanilla`` and ``ranktuner``, two steps each (both at once)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

STEPS = 2


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory):
    from ranktuner_verl.integration.rl import toy_grpo

    out = tmp_path_factory.mktemp("grpo")
    task = toy_grpo.build_task(out / "task")

    def run(mode):
        run_dir = out / mode
        return toy_grpo.run(run_dir, toy_grpo.overrides(task, run_dir, steps=STEPS, loss_mode=mode), steps=STEPS)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(("vanilla", "ranktuner"), pool.map(run, ("vanilla", "ranktuner"))))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["vanilla", "ranktuner"])
def test_grpo_steps_run_with_rollout_log_probs_equal_to_the_actors(grpo_runs, mode):
    """Every step: the rollout's token probabilities equal the actor's recomputed ones (fp32) -- at step 2 only if
    the weights the actor learned at step 1 reached the rollout; rewards are copy3 scores; the actor stepped."""
    run = grpo_runs[mode]
    assert [r["step"] for r in run.records] == list(range(1, STEPS + 1))
    assert max(run.values("training/rollout_probs_diff_max")) < 1e-5
    assert min(run.values("training/rollout_actor_probs_pearson_corr")) > 1 - 1e-6
    for score in run.values("critic/score/mean"):
        assert 0.0 <= score <= 1.0
    assert all(1 <= v <= 4 for v in run.values("response_length/max"))  # data.max_response_length=4
    assert all(v > 0 for v in run.values("actor/grad_norm")) and all(v >= 0 for v in run.values("actor/pg_clipfrac"))
    assert len(run.values("timing_s/gen")) == STEPS


@pytest.mark.slow
def test_ranktuner_weights_reach_the_update_and_vanilla_has_none(grpo_runs):
    run = grpo_runs["ranktuner"]
    means, p10, p90 = (run.values(f"actor/weight_{q}") for q in ("mean", "p10", "p90"))
    assert len(means) == STEPS
    assert all(abs(m - 1) < 1e-4 for m in means)  # token_weight.mean_one (the default): the update keeps its scale
    assert all(lo < hi for lo, hi in zip(p10, p90))  # ... while the tokens are weighted unequally
    assert any(key.startswith("actor/token_stat_") for key in grpo_runs["ranktuner"].records[0]["data"])
    assert not grpo_runs["vanilla"].values("actor/weight_mean")
