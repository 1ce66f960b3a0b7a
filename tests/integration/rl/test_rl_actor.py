"""Token-weighted PPO/GRPO through verl's real actor machinery on CPU (``integration/rl/actor_step.py``).

Each case is one actor update of a tiny Qwen2 (old log-probs by ``infer_batch``, then ``train_batch`` with verl's
``partial(ppo_loss, config=actor_config)``), run in one subprocess for all one-process cases and one torchrun for
Ulysses SP=2. The optimizer is SGD, so the parameters after the step carry the gradient itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ranktuner_verl.integration.rl.actor_step import DEFAULTS
from ranktuner_verl.methods import relative_scale

pytestmark = pytest.mark.slow

T07 = {"loss_mode": "ranktuner", "temperature": 0.7}
CASES = {
    "vanilla": {},
    "vanilla_without_hook": {"hook": False},
    "ones": {"loss_mode": "ranktuner", "token_weight": {"clamp_min": 1.0, "clamp_max": 1.0}},
    "halves": {"loss_mode": "ranktuner", "token_weight": {"clamp_min": 0.5, "clamp_max": 0.5, "mean_one": False}},
    "ranktuner_t1": {"loss_mode": "ranktuner"},
    "ranktuner_t07": T07,
    "ranktuner_t07_padded": {**T07, "use_remove_padding": False},
    "ranktuner_without_hook": {"loss_mode": "ranktuner", "hook": False},
    "bf16_exact": {"loss_mode": "ranktuner", "token_weight": {"form": "exact"}, "param_dtype": "bf16",
                   "record_logits": True},
    "bf16_deft": {"loss_mode": "deft", "token_weight": {"mean_one": False}, "param_dtype": "bf16",
                  "record_logits": True},
    "high_entropy": {"loss_mode": "high_entropy", "token_weight": {"rho": 0.25}},
}


def _run(tiny, tmp_path, cases, nproc=1):
    spec, out = tmp_path / "spec.json", tmp_path / "out.pt"
    spec.write_text(json.dumps({"model_path": str(tiny / "model"), "cases": cases}))
    launcher = ([sys.executable] if nproc == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"])
    result = subprocess.run([*launcher, "-m", "ranktuner_verl.integration.rl.actor_step", str(spec), str(out)],
                            capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def results(tiny, tmp_path_factory):
    return _run(tiny, tmp_path_factory.mktemp("rl_actor"), CASES)


@pytest.fixture(scope="module")
def ulysses(tiny, tmp_path_factory):
    return _run(tiny, tmp_path_factory.mktemp("rl_ulysses"), {"sp2": {**T07, "ulysses": 2}}, nproc=2)["sp2"]


def _ok(result):
    assert "error" not in result, result.get("traceback")
    return result


def _weight_records(result):
    return [r for r in _ok(result)["records"] if "weights" in r]


def _cat(result, key):
    return torch.cat([r[key] for r in _weight_records(result)])


def _stat(result, name):
    return torch.cat([r["stats"][name] for r in _weight_records(result)])


def test_weights_one_give_exactly_verls_vanilla_loss_and_gradients(results):
    vanilla, ones = _ok(results["vanilla"]), _ok(results["ones"])
    assert (_cat(results["ones"], "weights") == 1).all()
    for key in ("actor/pg_loss", "grad_norm", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert ones["metrics"][0][key] == vanilla["metrics"][0][key], key
    for name, value in vanilla["params"].items():
        assert torch.equal(ones["params"][name], value), name


def test_constant_weights_scale_loss_and_gradients_and_keep_clip_fractions(results):
    vanilla, halves = _ok(results["vanilla"]), _ok(results["halves"])
    mask = _cat(results["halves"], "response_mask")
    assert (_cat(results["halves"], "weights")[mask] == 0.5).all()
    one, half = vanilla["metrics"][0], halves["metrics"][0]
    assert half["actor/pg_loss"] == pytest.approx(0.5 * one["actor/pg_loss"], rel=1e-6)
    assert half["grad_norm"] == pytest.approx(0.5 * one["grad_norm"], rel=1e-5)
    assert half["actor/pg_clipfrac"] == one["actor/pg_clipfrac"] > 0
    assert half["actor/pg_clipfrac_lower"] == one["actor/pg_clipfrac_lower"]
    eps = torch.finfo(torch.float32).eps
    for name, start in halves["initial_params"].items():  # SGD: the step is lr * gradient
        expected = 0.5 * (vanilla["params"][name] - start)
        error = (halves["params"][name] - start - expected).abs()
        assert (error <= 1e-4 * expected.abs() + 4 * eps * start.abs()).all(), name  # + fp32 rounding of params


def test_weights_are_detached_and_metrics_are_logged(results):
    assert not any(r["weights_require_grad"] for r in _weight_records(results["ranktuner_t1"]))
    metrics = results["ranktuner_t1"]["metrics"][0]
    for key in ("actor/weight_mean", "actor/weight_p10", "actor/weight_p50",
                "actor/weight_p90", "actor/weight_gt1", "actor/token_stat_rank",
                "actor/token_stat_entropy"):
        assert key in metrics, key
    mask = _cat(results["ranktuner_t1"], "response_mask")
    weights = _cat(results["ranktuner_t1"], "weights")[mask].double()
    assert metrics["actor/weight_mean"] == pytest.approx(weights.mean().item(), rel=1e-3)  # mean of 2 halves
    assert not any(k.startswith("actor/token_") for k in results["vanilla"]["metrics"][0])


@pytest.mark.parametrize("case,temperature", [("ranktuner_t1", 1.0), ("ranktuner_t07", 0.7)])
def test_statistics_in_the_loss_equal_a_plain_hugging_face_forward(results, tiny, case, temperature):
    from transformers import AutoModelForCausalLM

    result = _ok(results[case])
    model = AutoModelForCausalLM.from_pretrained(tiny / "model", torch_dtype=torch.float32)
    input_ids, attention_mask = result["input_ids"], result["attention_mask"]
    prompt_len, response_len = DEFAULTS["prompt_len"], DEFAULTS["response_len"]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    z = (logits[:, prompt_len - 1 : -1].double() / temperature)
    labels = input_ids[:, prompt_len:]
    log_pi = torch.log_softmax(z, -1)
    z_label = z.gather(-1, labels[..., None])
    ref = {"log_prob": log_pi.gather(-1, labels[..., None]).squeeze(-1),
           "entropy": -(log_pi.exp() * log_pi).sum(-1), "rank": (z >= z_label).sum(-1).double(),
           "p_max": log_pi.amax(-1).exp()}
    mask = _cat(result, "response_mask")
    assert mask.shape == (DEFAULTS["batch"], response_len)
    assert torch.equal(_stat(result, "rank")[mask].double(), ref["rank"][mask])
    for name in ("entropy", "p_max"):
        torch.testing.assert_close(_stat(result, name)[mask].double(), ref[name][mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_cat(result, "log_prob")[mask].double(), ref["log_prob"][mask], rtol=1e-5, atol=1e-5)
    s_ref = torch.zeros(mask.shape, dtype=torch.float64)
    s_ref[mask] = relative_scale({k: v[mask] for k, v in ref.items()}).clamp(max=2.0)  # RL defaults: base one, clamp 2
    for start in range(0, len(mask), DEFAULTS["micro_batch"]):  # and mean_one: mean 1 over each micro-batch's tokens
        rows, kept = s_ref[start : start + DEFAULTS["micro_batch"]], mask[start : start + DEFAULTS["micro_batch"]]
        rows[kept] = rows[kept] / rows[kept].mean()
    torch.testing.assert_close(_cat(result, "weights")[mask].double(), s_ref[mask], rtol=2e-5, atol=0)


def _assert_same_update(a, b, tol=1e-6):
    mask = _cat(a, "response_mask")
    assert torch.equal(mask, _cat(b, "response_mask"))
    for name in ("rank", "entropy", "p_max"):
        torch.testing.assert_close(_stat(a, name)[mask], _stat(b, name)[mask], rtol=tol, atol=tol)
    torch.testing.assert_close(_cat(a, "weights"), _cat(b, "weights"), rtol=tol, atol=tol)
    assert a["metrics"][0]["actor/pg_loss"] == pytest.approx(b["metrics"][0]["actor/pg_loss"], rel=tol, abs=tol)


def test_remove_padding_off_agrees_with_on(results):
    _assert_same_update(results["ranktuner_t07_padded"], results["ranktuner_t07"])


def test_ulysses_sp2_equals_sp1(results, ulysses):
    _assert_same_update(ulysses, results["ranktuner_t07"])


def test_without_the_engine_statistics_the_loss_raises(results):
    assert "error" not in results["vanilla_without_hook"]
    error = results["ranktuner_without_hook"]["error"]
    assert error.startswith("RuntimeError") and "engine did not compute" in error and "'rank'" in error


def test_stock_vanilla_update_is_unchanged_by_the_hook(results):
    hooked, stock = _ok(results["vanilla"]), _ok(results["vanilla_without_hook"])
    assert {k: v for k, v in hooked["metrics"][0].items() if not k.startswith(("perf/", "mfu"))} == {
        k: v for k, v in stock["metrics"][0].items() if not k.startswith(("perf/", "mfu"))}
    for name, value in stock["params"].items():
        assert torch.equal(hooked["params"][name], value), name


@pytest.mark.parametrize("case,names", [("bf16_exact", ("rank", "expected_rank")), ("bf16_deft", ("sum_pi_squared",))])
def test_statistics_under_bf16_autocast_match_fp64_of_the_engines_logits(results, case, names):
    """verl's default mixed precision (param_dtype bf16: forward under torch.autocast) on CPU: the statistics the
    loss receives equal an fp64 computation from the very logits the engine produced, to fp32 precision."""
    result = _ok(results[case])
    logit_records = [r for r in result["records"] if "logits" in r]
    weight_records = _weight_records(result)
    assert len(logit_records) == len(weight_records) == 2
    lengths = result["attention_mask"].sum(-1)
    prompt_lens = result["attention_mask"][:, : DEFAULTS["prompt_len"]].sum(-1)
    per_micro = DEFAULTS["micro_batch"]
    for k, (logs, weights) in enumerate(zip(logit_records, weight_records)):
        z = logs["logits"].squeeze(0).double()
        assert logs["logits"].dtype == torch.bfloat16  # autocast was on
        labels = logs["output_args"]["input_ids_rmpad_rolled"].reshape(-1)
        log_pi = torch.log_softmax(z, -1)
        pi = log_pi.exp()
        ref = {"rank": (z >= z.gather(1, labels[:, None])).sum(-1).double(), "sum_pi_squared": (pi * pi).sum(-1),
               "expected_rank": (pi.sort(-1, descending=True).values
                                 * torch.arange(1, z.shape[1] + 1, dtype=torch.double)).sum(-1)}
        offset = 0
        for j in range(k * per_micro, (k + 1) * per_micro):
            rows = slice(offset + int(prompt_lens[j]) - 1, offset + int(lengths[j]) - 1)
            n = rows.stop - rows.start
            for name in names:
                got = weights["stats"][name][j - k * per_micro, :n].double()
                torch.testing.assert_close(got, ref[name][rows], rtol=2e-6, atol=0, msg=f"{case} {name}")
            offset += int(lengths[j])


def test_weights_under_bf16_come_from_fp32_statistics_not_verls_bf16_log_probs(results):
    """With bf16 logits and no flash-attn cross-entropy (this CPU) verl's log-probs are bf16; DEFT's weight
    p_t^(sum pi^2) must still equal its fp64 value from the engine's own logits, and reach the loss as fp32."""
    result = _ok(results["bf16_deft"])
    logit_records, weight_records = [r for r in result["records"] if "logits" in r], _weight_records(result)
    lengths = result["attention_mask"].sum(-1)
    prompt_lens = result["attention_mask"][:, : DEFAULTS["prompt_len"]].sum(-1)
    per_micro = DEFAULTS["micro_batch"]
    for k, (logs, record) in enumerate(zip(logit_records, weight_records)):
        assert record["log_prob"].dtype == torch.bfloat16 and record["weights"].dtype == torch.float32
        log_pi = torch.log_softmax(logs["logits"].squeeze(0).double(), -1)
        labels = logs["output_args"]["input_ids_rmpad_rolled"].reshape(-1)
        want = (log_pi.exp().square().sum(-1) * log_pi.gather(1, labels[:, None]).squeeze(1)).exp()
        offset = 0
        for j in range(k * per_micro, (k + 1) * per_micro):
            rows = slice(offset + int(prompt_lens[j]) - 1, offset + int(lengths[j]) - 1)
            got = record["weights"][j - k * per_micro, : rows.stop - rows.start].double()
            torch.testing.assert_close(got, want[rows], rtol=1e-5, atol=1e-6)
            offset += int(lengths[j])


def test_high_entropy_mask_keeps_the_top_rho_quantile(results):
    for record in _weight_records(results["high_entropy"]):
        mask = record["response_mask"]
        weights, entropy = record["weights"][mask], record["stats"]["entropy"][mask]
        assert set(weights.unique().tolist()) <= {0.0, 1.0}
        assert weights.mean().item() == pytest.approx(0.25, abs=1.5 / mask.sum().item())
        assert entropy[weights == 1].min() >= entropy[weights == 0].max()


def test_interleaved_timing_runs_each_variants_own_loss_in_turn(tiny, tmp_path):
    # bench_rl's timing loop: one worker, the loss switched before every update (it raises if a weighted variant's
    # update logged no token weights, i.e. ran another loss)
    code = ("import json, sys; from ranktuner_verl.integration.rl.actor_step import time_interleaved; "
            "print(json.dumps(time_interleaved(sys.argv[1], {'vanilla': {}, 'exact': {'loss_mode': 'ranktuner', "
            "'token_weight': {'form': 'exact'}}, 'mask': {'loss_mode': 'high_entropy'}}, rounds=2)))")
    result = subprocess.run([sys.executable, "-c", code, str(tiny / "model")], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    seconds = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(seconds) == ["vanilla", "exact", "mask"]
    assert all(len(values) == 2 and min(values) > 0 for values in seconds.values())


def test_bench_ratio_pairs_each_update_with_the_same_rounds_vanilla():
    # per round: weighted / vanilla of that round, then the median; the first round (warm-up, 9x here) is left out.
    # Round 2 is a slow spell for both; a ratio of medians would take 1.2 from round 1's weighted over round 3's vanilla.
    from ranktuner_verl.bench.rl import paired_ratio

    seconds = {"vanilla": [1.0, 1.0, 3.0, 1.0], "weighted": [9.0, 1.2, 3.3, 1.1]}
    assert paired_ratio(seconds, "weighted") == pytest.approx(1.1)
    assert paired_ratio(seconds, "vanilla") == 1.0
