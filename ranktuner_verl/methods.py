"""The six token-weighting methods, as detached weights w_t on the NLL (docs/methods.md).

    L = (1/N) * sum_t sg(w_t) * l_t,   l_t = -log p_t

Each method is a small pure function of the token statistics (``ranktuner_verl.stats``) registered by name with the
statistics it needs and its parameters. ``get_method(name, **params)`` validates both and returns a ``Method``.

Pure PyTorch: no verl import here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ranktuner_verl.stats import LN2, autocast_off, token_stats

#: log of the smallest normal fp32: a log-probability of -inf (p = 0, a masked label) is replaced by it, so that every
#: weight stays finite; any other log-probability, however small, is used as it is.
LOG_TINY = math.log(torch.finfo(torch.float32).tiny)
#: The stats key, added by ``Method.weights``, of the bool [N] "p_t = 0" (log_prob was -inf before the LOG_TINY
#: floor), for a method whose weight at p = 0 the floor would not give (DEFT's p^alpha with a small alpha).
P_IS_ZERO = "p_is_zero"
#: TALR's floor on the temperature tau (docs/methods.md).
TALR_TAU_FLOOR = 1e-6


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its default and what is valid (``choices``, or a numeric range)."""

    default: Any
    choices: tuple | None = None
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive
    low_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        kind = "an integer" if self.integer else "a number"
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low}"
        hi = "" if self.high is None else f"<= {self.high}"
        return " ".join(x for x in (kind, lo, "and" if lo and hi else "", hi) if x)

    def check(self, method: str, name: str, value: Any) -> Any:
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{method}: {name}={value!r} is not valid; use {self.describe()}")
            return value
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (self.integer and value != int(value))):
            raise ValueError(f"{method}: {name}={value!r} is not valid; use {self.describe()}")
        if (self.low is not None and (value <= self.low if self.low_open else value < self.low)) or (
            self.high is not None and value > self.high
        ):
            raise ValueError(f"{method}: {name}={value!r} is out of range; use {self.describe()}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., torch.Tensor]
    params: Mapping[str, Param]
    needs: Callable[[Mapping[str, Any]], frozenset[str]]
    source: str
    family: str


#: The families of importance signal of Tab. 1 of Yu et al. (arXiv 2602.01745): what marks a token as important to a
#: method (the noise-injection diagnosis ranks tokens by it, ``diagnostics.table.SIGNALS``).
FAMILIES = ("no signal", "probability-dominant", "entropy-dominant", "relative scale")

#: name -> MethodSpec, filled by ``@register``.
METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, source: str, needs, family: str, params: Mapping[str, Param] | None = None):
    """Register ``fn(stats, mask, **params) -> weights`` as method ``name``.

    ``needs``: the statistic names (always with log_prob), or a function of the params returning them.
    ``family``: its family of importance signal (``FAMILIES``).
    """
    if family not in FAMILIES:
        raise ValueError(f"method {name!r}: unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    needs_fn = needs if callable(needs) else (lambda _p, fixed=frozenset(needs): fixed)

    def deco(fn):
        needs_of = lambda p: frozenset(needs_fn(p)) | {"log_prob"}  # noqa: E731
        METHODS[name] = MethodSpec(name, fn, dict(params or {}), needs_of, source, family)
        return fn

    return deco


@dataclass(frozen=True)
class Method:
    """A weighting method with validated parameters. ``weights(stats, mask)`` -> detached w_t [N]."""

    name: str
    params: Mapping[str, Any]
    needs: frozenset[str]
    stat_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def weights(self, stats: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Detached weights [N]. ``mask`` [N] selects the tokens that batch-level statistics (TALR's tau, DEFT-cayley's
        a_f) are taken over (the supervised tokens); None means all."""
        missing = self.needs - stats.keys()
        if missing:
            raise KeyError(f"method {self.name!r} needs statistics {sorted(missing)}, got only {sorted(stats)}")
        with torch.no_grad(), autocast_off(stats["log_prob"].device):
            stats = {k: v.detach().float() for k, v in stats.items()}
            log_p = stats["log_prob"]
            stats[P_IS_ZERO] = log_p == -math.inf
            stats["log_prob"] = torch.where(stats[P_IS_ZERO], LOG_TINY, log_p)  # p = 0 only: every p > 0 is kept
            select = None if mask is None else mask.bool()
            return METHODS[self.name].fn(stats, select, **self.params)


def method_names(text: str) -> list[str]:
    """``"sft,ranktuner"`` (a ``--methods`` value) -> ``["sft", "ranktuner"]``; ValueError listing the valid names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown or text!r}; choose from {', '.join(METHODS)}")
    return names


def get_method(name: str, **params) -> Method:
    """The method ``name`` with ``params`` (defaults filled in). Raises ValueError listing what is valid."""
    if name not in METHODS:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(METHODS)}")
    spec = METHODS[name]
    unknown = params.keys() - spec.params.keys()
    if unknown:
        valid = ", ".join(f"{k} ({p.describe()}, default {p.default!r})" for k, p in spec.params.items()) or "none"
        raise ValueError(f"{name}: unknown parameter(s) {sorted(unknown)}; valid: {valid}")
    values = {k: p.check(name, k, params.get(k, p.default)) for k, p in spec.params.items()}
    stat_kwargs = {"top_k": values["top_k"]} if "top_k" in values else {}
    return Method(name, values, spec.needs(values), stat_kwargs)


def token_weights(name: str, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                  **params) -> torch.Tensor:
    """Detached weights w_t [N] of method ``name`` for ``logits [N, V]`` and ``labels [N]``."""
    method = get_method(name, **params)
    return method.weights(token_stats(logits, labels, method.needs, **method.stat_kwargs), mask)


def _select(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x[mask]


# --------------------------------------------------------------------------------------------------------------------
# The methods. Each returns w_t [N] from fp32 statistics (a log_prob of -inf replaced by LOG_TINY).
# --------------------------------------------------------------------------------------------------------------------


@register("sft", source="plain NLL; equals verl 0.9.1 verl.workers.utils.losses.sft_loss", needs=(), family="no signal")
def sft(stats, mask):
    """w_t = 1."""
    return torch.ones_like(stats["log_prob"])


@register("dft", source="Wu et al., arXiv 2508.05629 (DFT)", needs=(), family="probability-dominant")
def dft(stats, mask):
    """w_t = p_t (Wu et al. 2025, Eq. 9; TRL loss_type="dft")."""
    return stats["log_prob"].exp()


@register(
    "talr",
    source="Lin et al., arXiv 2509.20758 (TALR)",
    needs=(),
    family="probability-dominant",
    params={"w_min": Param(0.01, low=0.0, high=1.0), "normalize": Param("none", choices=("none", "simplex"))},
)
def talr(stats, mask, w_min, normalize):
    """w_t = max(p_t^(1/tau), w_min), tau = max(median of the batch's token NLLs, 1e-6) (Lin et al. 2025).

    ``normalize="simplex"`` (the paper): w_t <- n * w_t / sum w over the n masked tokens, so that the token mean of
    w_t * l_t is the simplex-weighted sum of the paper. Default "none", as in the public re-implementation.
    """
    log_p = stats["log_prob"]
    nll = _select(-log_p, mask)
    tau = max(nll.median().item(), TALR_TAU_FLOOR) if nll.numel() else 1.0
    weights = (log_p / tau).exp().clamp(min=w_min)
    if normalize == "simplex":
        picked = _select(weights, mask)
        if picked.numel():
            weights = weights * (picked.numel() / picked.sum().clamp(min=torch.finfo(torch.float32).tiny))
    return weights


@register(
    "eaft",
    source="Diao et al., arXiv 2601.02151 (EAFT)",
    needs=lambda p: {"topk_entropy"} if p["entropy"] == "topk" else {"entropy", "log_vocab"},
    family="entropy-dominant",
    params={
        "top_k": Param(20, low=1, integer=True),
        "alpha": Param(1.0, low=0.0, low_open=True),
        "entropy": Param("topk", choices=("topk", "full")),
    },
)
def eaft(stats, mask, top_k, alpha, entropy):
    """w_t = (H_t^topK / ln K)^alpha, H^topK the entropy of softmax over the K largest logits (Diao et al. 2026).

    Normalised by ln K (LLaMA-Factory uses the constant 3.0 ~ ln 20 = 2.9957). ``entropy="full"``: (H_t / ln V)^alpha.
    """
    if entropy == "topk":
        h, log_k = stats["topk_entropy"], torch.full_like(stats["topk_entropy"], math.log(top_k))
    else:
        h, log_k = stats["entropy"], stats["log_vocab"]
    # K = 1 or V = 1: a one-token distribution has zero entropy; weight 0 (its NLL is 0 as well).
    ratio = torch.where(log_k > 0, h / log_k.clamp(min=1e-12), torch.zeros_like(h))
    return ratio.clamp(min=0, max=1).pow(alpha)


@register(
    "deft",
    source="Wang et al., arXiv 2602.11424 (DEFT)",
    needs=lambda p: {"sum_pi_squared"} if p["gate"] == "renyi2" else set(),
    family="probability-dominant",
    params={"gate": Param("renyi2", choices=("renyi2", "cayley"))},
)
def deft(stats, mask, gate):
    """w_t = p_t^alpha_t with a detached gate alpha_t (Wang et al. 2026).

    renyi2: alpha_t = sum_v pi_t(v)^2. cayley: alpha_t = clamp(a_f + (1 - a_f) p_t / (2 - p_t), 1e-3, 1),
    a_f = 0.5 * mean p over the batch's supervised tokens. The official objective -(p^a - 1)/a has gradient
    sg(p^a) * grad(-log p): the same as this weight form. A label of probability 0 gets 0 = 0^alpha (alpha > 0).
    """
    log_p = stats["log_prob"]
    if gate == "renyi2":
        alpha = stats["sum_pi_squared"]
    else:
        p = log_p.exp()
        picked = _select(p, mask)
        a_f = 0.5 * picked.mean() if picked.numel() else p.new_tensor(0.5)
        alpha = (a_f + (1 - a_f) * p / (2 - p)).clamp(1e-3, 1.0)
    weights = (alpha * log_p).exp()
    return weights if P_IS_ZERO not in stats else weights.masked_fill_(stats[P_IS_ZERO], 0.0)


#: RankTuner's floor on p_t * s(H_t) in the practical form (the authors' loss code): S_t <= 1e6^K.
RANKTUNER_MIN_PS = 1e-6
#: RankTuner's proxies of E[R_t] in the practical form (``expected_rank_proxy``); the first is the default.
RANKTUNER_PROXIES = ("piecewise", "massey")


def guessing_entropy_bound(entropy_bits: torch.Tensor) -> torch.Tensor:
    """2^(H-2) + 1, H in bits: Massey's (1994) lower bound on E[R], valid for H >= 2 bits."""
    return torch.exp2(entropy_bits - 2) + 1


def expected_rank_proxy(entropy_bits: torch.Tensor, p_max: torch.Tensor | None, proxy: str = "piecewise"):
    """s(H_t), RankTuner's proxy of E[R_t] in the practical form (Yu et al., arXiv 2602.01745; docs/methods.md).

    piecewise (the authors' loss code): s = 2^(H-2) + 1 for H >= 2 bits (Massey's bound), 1 + (1 - p_max) below
        (every token but the most likely one has rank >= 2, so E[R] >= 1 + (1 - p_max)).
    massey (ablation; this project's earlier form): s = 2^(H-2) + 1 for every H.
    """
    massey = guessing_entropy_bound(entropy_bits)
    if proxy == "massey":
        return massey
    if proxy != "piecewise":
        raise ValueError(f"unknown RankTuner proxy {proxy!r}; valid: {', '.join(map(repr, RANKTUNER_PROXIES))}")
    return torch.where(entropy_bits >= 2, massey, 2 - p_max)


def rank_exponent(xi: torch.Tensor) -> torch.Tensor:
    """K(xi) = log2(xi + 1)^-2, the exponent of the practical form (Yu et al. 2026; in (0, 1] for xi >= 1)."""
    return torch.log2(xi + 1).pow(-2)


def _rank_f(x: torch.Tensor) -> torch.Tensor:
    """f(x) = 1 / log2(x + 1) (Yu et al. 2026)."""
    return 1.0 / torch.log2(x + 1)


def _ranktuner_needs(params: Mapping[str, Any]) -> set[str]:
    if params.get("form", "practical") == "exact":
        return {"rank", "expected_rank"}
    return {"rank", "entropy", "log_prob"} | ({"p_max"} if params.get("proxy", "piecewise") == "piecewise" else set())


#: |S_t - 1| < S_BAND: the tokens RankTuner leaves at their base weight (logged as s_near_one, drawn as a band).
S_BAND = 0.05


def relative_scale(stats: Mapping[str, torch.Tensor], form: str = "practical", proxy: str = "piecewise",
                   **_other_params) -> torch.Tensor:
    """RankTuner's Relative Scale S_t = 1 / I_t (Yu et al., arXiv 2602.01745), from ``token_stats`` output and the
    method's parameters (``relative_scale(stats, **method.params)``; ``base`` does not change S_t).

    exact:     I_t = 2^(f(R_t) - f(E[R_t])), f(x) = 1/log2(x+1)   =>  S_t = 2^(f(E[R_t]) - f(R_t)).
    practical: S_t = max(p_t * s_t, 1e-6)^(-K(xi_t)), s_t = ``expected_rank_proxy`` (H in bits),
               xi_t = max(R_t, s_t, 1), K(xi) = log2(xi + 1)^-2 (Cauchy mean value theorem on f against ln; the paper
               drops a factor xi/(xi+1)).
    """
    for name, value in (("form", form), ("proxy", proxy)):
        METHODS["ranktuner"].params[name].check("ranktuner", name, value)
    missing = _ranktuner_needs({"form": form, "proxy": proxy}) - stats.keys()
    if missing:
        raise KeyError(f"RankTuner's relative scale (form={form}, proxy={proxy}) needs statistics {sorted(missing)}, "
                       f"got only {sorted(stats)}")
    rank = stats["rank"]
    if form == "exact":
        return torch.exp2(_rank_f(stats["expected_rank"].clamp(min=1)) - _rank_f(rank))
    s = expected_rank_proxy(stats["entropy"].clamp(min=0) / LN2, stats.get("p_max"), proxy)
    k = rank_exponent(torch.maximum(rank, s).clamp(min=1))
    # max(p s, 1e-6) in log space: exact, and a label of probability 0 (log p = -inf) lands on the floor
    log_ps = (stats["log_prob"] + s.log()).clamp(min=math.log(RANKTUNER_MIN_PS))
    return torch.exp(-k * log_ps)


@register(
    "ranktuner",
    source="Yu et al., arXiv 2602.01745 (RankTuner, ICML 2026)",
    needs=_ranktuner_needs,
    family="relative scale",
    params={"form": Param("practical", choices=("practical", "exact")), "base": Param("p", choices=("p", "one")),
            "proxy": Param(RANKTUNER_PROXIES[0], choices=RANKTUNER_PROXIES)},
)
def ranktuner(stats, mask, form, base, proxy):
    """w_t = base_t * S_t, base_t = p_t ("p", the paper's choice for math) or 1 ("one"); S_t: ``relative_scale``
    (``proxy`` applies to the practical form only)."""
    scale = relative_scale(stats, form, proxy)
    return scale * stats["log_prob"].exp() if base == "p" else scale
