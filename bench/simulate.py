"""The traffic simulator: what Prometheus would report, interval by interval, for a stable and a canary version.

Every engine sees the *same* traffic for a given (seed, run): all randomness of interval ``t`` comes from
``SeedSequence([seed, run, t])`` and is drawn for the whole traffic before any request is assigned to a
version. A request goes to the canary when its own uniform ``u_assign`` is below the canary's weight, and
its latency, error and label outcome are the same quantile of whichever version serves it (common random
numbers). Only the assignment changes with an engine's decisions, so differences between engines are
differences in their decisions, not in their luck.

What an engine gets per interval and per version is a :class:`VersionInterval`: counter *increments*
(requests, errors, latency bucket counts, labelled and correct outcomes) computed from 15 s scrape samples
as Prometheus sees them, with missed scrapes (the interval's increase then ends at an earlier sample, so a
missed final scrape shifts counts into the next interval) and counter resets (the raw increase across a
reset is garbled; ``reset`` flags it, and ``promql`` holds what PromQL's reset-aware ``increase()`` returns).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Istio's default ``istio_request_duration_milliseconds`` bucket upper bounds (``le``), +Inf last.
ISTIO_BUCKETS_MS: tuple[float, ...] = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
    math.inf,
)
N_BUCKETS = len(ISTIO_BUCKETS_MS)
_FINITE_EDGES = np.asarray(ISTIO_BUCKETS_MS[:-1])

# Layout of one version's counter vector: requests, errors, the buckets (non-cumulative), labelled, correct.
F_REQUESTS = 0
F_ERRORS = 1
F_BUCKETS = slice(2, 2 + N_BUCKETS)
F_LABELLED = 2 + N_BUCKETS
F_CORRECT = 3 + N_BUCKETS
N_FIELDS = 4 + N_BUCKETS

STABLE = 0
CANARY = 1
Z99 = 2.3263478740408408  # the standard normal's 0.99 quantile


@dataclass(frozen=True)
class SimConfig:
    """The simulated service and its monitoring (every field is a flag of ``python -m bench``)."""

    rps: float = 100.0
    diurnal_amplitude: float = 0.3
    diurnal_period_s: float = 86400.0
    steps: tuple[float, ...] = (1.0, 5.0, 10.0, 25.0, 50.0)
    interval_s: float = 60.0
    scrape_s: float = 15.0
    p_missed_scrape: float = 0.02
    p_reset: float = 0.01
    latency_median_ms: float = 40.0
    latency_sigma: float = 0.5
    error_rate: float = 0.005
    accuracy: float = 0.92
    label_fraction: float = 0.2
    label_delay: tuple[int, int] = (1, 3)
    gpu_pods: int = 2
    gpu_phi: float = 0.9
    gpu_mean: float = 55.0
    gpu_sd: float = 5.0

    def __post_init__(self) -> None:
        scrapes = self.interval_s / self.scrape_s
        if scrapes < 1 or abs(scrapes - round(scrapes)) > 1e-9:
            raise ValueError(f"interval {self.interval_s}s must be a whole number of scrapes of {self.scrape_s}s")
        if not self.steps or any(not 0 < s <= 100 for s in self.steps):
            raise ValueError(f"steps must be canary weights in (0, 100], got {self.steps}")
        if not 0 <= self.label_delay[0] <= self.label_delay[1]:
            raise ValueError(f"label delay must be 0 <= min <= max, got {self.label_delay}")

    @property
    def scrapes_per_interval(self) -> int:
        return round(self.interval_s / self.scrape_s)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = list(self.steps)
        out["label_delay"] = list(self.label_delay)
        out["latency_buckets_ms"] = [b if math.isfinite(b) else "+Inf" for b in ISTIO_BUCKETS_MS]
        return out


@dataclass(frozen=True)
class Scenario:
    """How the canary differs from the stable version."""

    name: str
    description: str
    latency_factor: float = 1.0  # every canary latency multiplied by this
    p99_factor: float = 1.0  # canary p99 multiplied by this, median unchanged (larger sigma above the median)
    error_factor: float = 1.0
    accuracy_delta: float = 0.0


SCENARIOS: Mapping[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("aa", "canary identical to stable"),
        Scenario("latency-median+10pct", "every canary latency x1.1 (median and p99 x1.1)", latency_factor=1.1),
        Scenario(
            "latency-tail-p99+30pct",
            "two-piece lognormal: sigma below the median unchanged, sigma above it raised to "
            "sigma + ln(1.3)/z_0.99, so the median is unchanged and p99 is x1.3",
            p99_factor=1.3,
        ),
        Scenario("errors-x2", "canary error rate x2 (0.5% -> 1.0%)", error_factor=2.0),
        Scenario("accuracy-minus-2pts", "canary accuracy 2 points lower (92% -> 90%)", accuracy_delta=-0.02),
    )
}


@dataclass(frozen=True)
class VersionTruth:
    """The true per-request distribution of one version: a two-piece lognormal latency and two Bernoullis."""

    median_ms: float
    sigma_low: float
    sigma_high: float
    error_rate: float
    accuracy: float

    def latency_ms(self, z: FloatArray) -> FloatArray:
        """The latency at standard-normal quantile ``z`` (the inverse CDF, so versions share quantiles)."""
        sigma = np.where(z > 0, self.sigma_high, self.sigma_low)
        return np.asarray(self.median_ms * np.exp(sigma * z), dtype=np.float64)

    def cdf(self, ms: FloatArray) -> FloatArray:
        """P(latency <= ms)."""
        ms = np.asarray(ms, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_ratio = np.log(ms / self.median_ms)
        sigma = np.where(log_ratio > 0, self.sigma_high, self.sigma_low)
        return np.asarray(ndtr(log_ratio / sigma), dtype=np.float64)

    def sf(self, ms: FloatArray) -> FloatArray:
        """P(latency > ms), accurate far in the upper tail."""
        ms = np.asarray(ms, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_ratio = np.log(ms / self.median_ms)
        sigma = np.where(log_ratio > 0, self.sigma_high, self.sigma_low)
        return np.asarray(ndtr(-log_ratio / sigma), dtype=np.float64)

    def bin_probs(self) -> FloatArray:
        """P(a request falls in each Istio bucket), non-cumulative: lower-tail differences below the median,
        upper-tail differences above it, so that the far buckets keep their tiny but non-zero mass."""
        lower = np.concatenate([[0.0], _FINITE_EDGES])
        upper = np.concatenate([_FINITE_EDGES, [np.inf]])
        by_cdf = self.cdf(upper) - self.cdf(lower)
        by_sf = self.sf(lower) - self.sf(upper)
        return np.where(lower >= self.median_ms, by_sf, by_cdf)

    def scaled(self, latency_factor: float, error_delta: float, accuracy_delta: float) -> VersionTruth:
        """This version with every latency scaled and the error rate and accuracy shifted (a policy margin)."""
        return VersionTruth(
            self.median_ms * latency_factor,
            self.sigma_low,
            self.sigma_high,
            self.error_rate + error_delta,
            self.accuracy + accuracy_delta,
        )


@dataclass(frozen=True)
class Truth:
    """What only the oracle may know: both versions' true per-request distributions."""

    scenario: str
    bucket_edges_ms: tuple[float, ...]
    stable: VersionTruth
    canary: VersionTruth
    label_fraction: float


def truth_for(config: SimConfig, scenario: Scenario) -> Truth:
    """The true distributions of both versions under ``scenario``."""
    sigma = config.latency_sigma
    stable = VersionTruth(config.latency_median_ms, sigma, sigma, config.error_rate, config.accuracy)
    canary = VersionTruth(
        config.latency_median_ms * scenario.latency_factor,
        sigma,
        sigma + math.log(scenario.p99_factor) / Z99,
        config.error_rate * scenario.error_factor,
        config.accuracy + scenario.accuracy_delta,
    )
    return Truth(scenario.name, ISTIO_BUCKETS_MS, stable, canary, config.label_fraction)


# --- what engines see -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Counts:
    """Counter increments over one interval for one version; ``buckets`` are non-cumulative."""

    requests: int
    errors: int
    buckets: IntArray
    labelled: int
    correct: int

    @property
    def cumulative(self) -> IntArray:
        """The buckets as Prometheus stores them: cumulative ``le`` counts, +Inf last (= requests)."""
        return np.cumsum(self.buckets)

    @classmethod
    def from_vector(cls, vector: IntArray) -> Counts:
        return cls(
            int(vector[F_REQUESTS]),
            int(vector[F_ERRORS]),
            vector[F_BUCKETS].copy(),
            int(vector[F_LABELLED]),
            int(vector[F_CORRECT]),
        )


@dataclass(frozen=True, eq=False)
class VersionInterval:
    """One version's data for one interval.

    ``raw``: the increase between the last available scrape samples (what a client computing increments
    from raw samples gets); garbled - usually negative - when the counters were reset, which ``reset`` flags.
    ``promql``: what PromQL's ``increase()`` returns (a drop is read as a restart from zero, so only the
    requests between the last sample before the reset and the reset are lost). Equal to ``raw`` without reset.
    ``scrapes``: how many of the interval's scrapes succeeded. ``gpu_util``: per-pod mean utilisation (%)
    over the successful scrapes (NaN when none).
    """

    raw: Counts
    promql: Counts
    reset: bool
    scrapes: int
    gpu_util: FloatArray


@dataclass(frozen=True, eq=False)
class IntervalData:
    """Everything an engine sees at the end of one interval."""

    index: int  # 0-based interval number since the rollout started
    end_s: float  # seconds since the rollout started
    interval_s: float
    weight: float  # canary weight (%) in effect during this interval
    step: int  # index of the current step in the schedule
    n_steps: int
    stable: VersionInterval
    canary: VersionInterval

    @property
    def last_step(self) -> bool:
        return self.step >= self.n_steps - 1


@dataclass(frozen=True)
class Served:
    """Harness bookkeeping, never shown to engines: requests each version really served this interval."""

    stable: int
    canary: int


# --- the traffic, shared by every engine of a run ---------------------------------------------


@dataclass(frozen=True, eq=False)
class IntervalDraws:
    """All the randomness of one interval, drawn before any request is assigned to a version."""

    u_assign: FloatArray  # canary when u_assign < weight
    t_frac: FloatArray  # arrival time within the interval, in [0, 1)
    latency_ms: tuple[FloatArray, FloatArray]  # per version (stable, canary)
    bins: tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]
    error: tuple[BoolArray, BoolArray]
    labelled: BoolArray
    correct: tuple[BoolArray, BoolArray]
    delay: IntArray  # intervals until the label is reported
    scrape_ok: BoolArray  # (version, scrape)
    reset_at: FloatArray  # (version,): fraction of the interval where counters restart, NaN if none
    gpu: FloatArray  # (version, pod, scrape): utilisation %


class RunTraffic:
    """The traffic of one (seed, run) under one scenario; interval draws are cached for every engine."""

    def __init__(self, config: SimConfig, scenario: Scenario, seed: int, run: int) -> None:
        self.config = config
        self.scenario = scenario
        self.truth = truth_for(config, scenario)
        self.seed = seed
        self.run = run
        rng = np.random.default_rng(np.random.SeedSequence([seed, run]))
        self.phase = float(rng.uniform(0.0, 2 * math.pi))
        stationary_sd = config.gpu_sd / math.sqrt(max(1e-12, 1 - config.gpu_phi**2))
        self._gpu_state = config.gpu_mean + stationary_sd * rng.standard_normal((2, config.gpu_pods))
        self._draws: list[IntervalDraws] = []

    def rate(self, t: int) -> float:
        """Requests per second during interval ``t`` (diurnal sinusoid with this run's phase)."""
        c = self.config
        mid = (t + 0.5) * c.interval_s
        return c.rps * (1 + c.diurnal_amplitude * math.sin(2 * math.pi * mid / c.diurnal_period_s + self.phase))

    def draws(self, t: int) -> IntervalDraws:
        while len(self._draws) <= t:
            self._draws.append(self._generate(len(self._draws)))
        return self._draws[t]

    def _generate(self, t: int) -> IntervalDraws:
        c = self.config
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.run, t]))
        n = int(rng.poisson(max(0.0, self.rate(t)) * c.interval_s))
        u = rng.random((5, n))
        z = rng.standard_normal(n)
        delay = rng.integers(c.label_delay[0], c.label_delay[1] + 1, n)
        scrapes = c.scrapes_per_interval
        scrape_ok = rng.random((2, scrapes)) >= c.p_missed_scrape
        resets = rng.random(2) < c.p_reset
        reset_at = np.where(resets, rng.random(2), np.nan)
        noise = rng.standard_normal((2, c.gpu_pods, scrapes))
        gpu = np.empty((2, c.gpu_pods, scrapes))
        state = self._gpu_state
        for k in range(scrapes):
            state = c.gpu_mean + c.gpu_phi * (state - c.gpu_mean) + c.gpu_sd * noise[:, :, k]
            gpu[:, :, k] = state
        self._gpu_state = state
        truth = self.truth
        latency = (truth.stable.latency_ms(z), truth.canary.latency_ms(z))
        bins = (
            np.searchsorted(_FINITE_EDGES, latency[0], side="left"),
            np.searchsorted(_FINITE_EDGES, latency[1], side="left"),
        )
        u_error, u_label, u_correct = u[2], u[3], u[4]
        return IntervalDraws(
            u_assign=u[0],
            t_frac=u[1],
            latency_ms=latency,
            bins=bins,
            error=(u_error < truth.stable.error_rate, u_error < truth.canary.error_rate),
            labelled=u_label < truth.label_fraction,
            correct=(u_correct < truth.stable.accuracy, u_correct < truth.canary.accuracy),
            delay=delay,
            scrape_ok=scrape_ok,
            reset_at=reset_at,
            gpu=np.clip(gpu, 0.0, 100.0),
        )


# --- one rollout: the counters as they evolve under an engine's weights -------------------------


@dataclass
class _Counter:
    """One version's counters and the scrape samples Prometheus holds of them."""

    value: IntArray = field(default_factory=lambda: np.zeros(N_FIELDS, dtype=np.int64))
    last_sample: IntArray = field(default_factory=lambda: np.zeros(N_FIELDS, dtype=np.int64))
    reset_pending: bool = False


class Rollout:
    """One engine's rollout over a :class:`RunTraffic`: call :meth:`step` once per interval with the weight."""

    def __init__(self, traffic: RunTraffic) -> None:
        self.traffic = traffic
        self.config = traffic.config
        self.t = 0
        self._counters = (_Counter(), _Counter())
        # labels reported later: interval -> list of (version, arrival fraction, correct)
        self._labels: dict[int, list[tuple[int, FloatArray, BoolArray]]] = {}

    def step(self, weight: float, step: int = 0, n_steps: int = 1) -> tuple[IntervalData, Served]:
        """Simulate the next interval with the canary at ``weight`` percent."""
        t = self.t
        draws = self.traffic.draws(t)
        canary = draws.u_assign < weight / 100.0
        masks = (~canary, canary)
        for v in (STABLE, CANARY):
            self._queue_labels(t, v, draws, masks[v])
        pending = self._labels.pop(t, [])
        versions = []
        for v in (STABLE, CANARY):
            arrivals = [(tf, ok) for (ver, tf, ok) in pending if ver == v]
            versions.append(self._interval(v, draws, masks[v], arrivals))
        self.t += 1
        data = IntervalData(
            index=t,
            end_s=(t + 1) * self.config.interval_s,
            interval_s=self.config.interval_s,
            weight=weight,
            step=step,
            n_steps=n_steps,
            stable=versions[STABLE],
            canary=versions[CANARY],
        )
        return data, Served(int(masks[STABLE].sum()), int(masks[CANARY].sum()))

    def _queue_labels(self, t: int, v: int, draws: IntervalDraws, mask: BoolArray) -> None:
        chosen = mask & draws.labelled
        tf, ok, delay = draws.t_frac[chosen], draws.correct[v][chosen], draws.delay[chosen]
        for d in np.unique(delay):
            sel = delay == d
            self._labels.setdefault(t + int(d), []).append((v, tf[sel], ok[sel]))

    def _interval(
        self, v: int, draws: IntervalDraws, mask: BoolArray, arrivals: list[tuple[FloatArray, BoolArray]]
    ) -> VersionInterval:
        scrapes = self.config.scrapes_per_interval
        # events in time order: each scrape (end of a 15 s slot) and, maybe, a reset inside a slot
        times = [(k + 1) / scrapes for k in range(scrapes)]
        kinds = list(range(scrapes))  # scrape index, or -1 for the reset
        reset_at = float(draws.reset_at[v])
        if not math.isnan(reset_at):
            pos = int(np.searchsorted(times, reset_at, side="right"))
            times.insert(pos, reset_at)
            kinds.insert(pos, -1)
        edges = np.asarray(times)
        slots = len(times)
        counts = np.zeros((slots, N_FIELDS), dtype=np.int64)
        slot = np.searchsorted(edges, draws.t_frac[mask], side="right")
        bins = draws.bins[v][mask]
        counts[:, F_BUCKETS] = np.bincount(slot * N_BUCKETS + bins, minlength=slots * N_BUCKETS).reshape(
            slots, N_BUCKETS
        )
        counts[:, F_REQUESTS] = counts[:, F_BUCKETS].sum(axis=1)
        counts[:, F_ERRORS] = np.bincount(slot[draws.error[v][mask]], minlength=slots)
        if arrivals:
            tf = np.concatenate([a for a, _ in arrivals])
            ok = np.concatenate([b for _, b in arrivals])
            lslot = np.searchsorted(edges, tf, side="right")
            counts[:, F_LABELLED] = np.bincount(lslot, minlength=slots)
            counts[:, F_CORRECT] = np.bincount(lslot[ok], minlength=slots)

        counter = self._counters[v]
        start = counter.last_sample
        prev = start
        promql = np.zeros(N_FIELDS, dtype=np.int64)
        flagged = False
        scraped: list[int] = []
        for i, kind in enumerate(kinds):
            counter.value = counter.value + counts[i]
            if kind < 0:
                counter.value = np.zeros(N_FIELDS, dtype=np.int64)
                counter.reset_pending = True
            elif draws.scrape_ok[v, kind]:
                sample = counter.value.copy()
                delta = sample - prev
                promql += np.where(delta >= 0, delta, sample)
                prev = sample
                scraped.append(kind)
                if counter.reset_pending:
                    flagged = True
                    counter.reset_pending = False
        counter.last_sample = prev
        raw = prev - start
        gpu = draws.gpu[v][:, scraped].mean(axis=1) if scraped else np.full(self.config.gpu_pods, np.nan)
        return VersionInterval(
            raw=Counts.from_vector(raw),
            promql=Counts.from_vector(promql),
            reset=flagged,
            scrapes=len(scraped),
            gpu_util=gpu,
        )
