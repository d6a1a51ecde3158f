"""vLLM v1 scheduling of one replica, in closed form, for one configuration.

The scheduler (vllm/v1/core/sched/scheduler.py) runs running requests first, admits
waiting ones only while KV blocks, ``max_num_seqs`` and the token budget allow, reserves
nothing for future output, and preempts the newest running request when a growing one
needs a block and none is free. This module turns those rules into steady-state and
phase formulas:

* Running count. A request's context grows from its prompt p to p + o over its o
  decode rounds, so the running set's mean context is the length-biased mean
  E[p] + E[o^2] / (2 E[o]). The KV pool holds C / that many requests.
* Preemption. A preempted request returns to the front of the queue, so the running
  set is the oldest requests whose KV fits, and the victims are the young ones at its
  end. Rice's formula counts how often the growth of the requests ahead of a newly
  admitted one crosses its slack (``tail_preemptions``), scaled by the share of each
  round's growth that the previous round's completions do not free
  (``uncovered_growth_share``). The tokens they hold follow from a balance: with
  requests waiting, the growth between completions that the frees do not cover is
  taken from victims (``recomputed_per_completion``).
* Offline batch. Fill (prefill of the first admissions), steady state while requests
  wait, and drain (the last running requests finish with a shrinking batch; the
  longest output sets the end). A replica whose requests are all admitted at once and
  fit the pool runs as one cohort; one whose cohort would overflow the pool is a queue.
* Rate and concurrency. Little's law for the running count, a many-server queue
  approximation for waiting (rate), and the closed-loop identity for clients.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import erf, gammaln

from kvplan.costmodel.hardware import Layout, Memory, StepTime, round_time
from kvplan.costmodel.inputs import ModelInputs

# Quantiles reported for TTFT, TPOT and end-to-end latency.
QUANTILES = (0.5, 0.9, 0.99)

# Points of the request-order grid used for latency percentiles.
ORDER_POINTS = 32

# Alive requests below this count end the drain: the last request has finished.
LAST_REQUEST_THRESHOLD = 0.5


class Moments(NamedTuple):
    mean_prompt: jnp.ndarray
    mean_output: jnp.ndarray
    output_variance: jnp.ndarray
    running_context: jnp.ndarray  # length-biased mean context of a running request
    new_request_tokens: jnp.ndarray  # KV tokens of a just-admitted request
    mean_inverse_output: jnp.ndarray  # E[1 / max(o - 1, 1)]


class Latency(NamedTuple):
    mean: jnp.ndarray
    p50: jnp.ndarray
    p90: jnp.ndarray
    p99: jnp.ndarray


class ReplicaResult(NamedTuple):
    """Predicted behaviour of the whole deployment, from one replica's model."""

    makespan_s: jnp.ndarray  # NaN outside batch mode; replaced before output
    output_tokens_per_s: jnp.ndarray  # whole deployment
    ttft: Latency
    tpot: Latency
    e2e: Latency
    peak_kv_usage: jnp.ndarray
    preemptions: jnp.ndarray  # batch: whole run; other modes: per second
    preemptions_per_request: jnp.ndarray
    running_requests: jnp.ndarray  # per replica, steady state
    step: StepTime  # steady-state round
    kv_bound: jnp.ndarray
    budget_bound: jnp.ndarray
    keeps_up: jnp.ndarray
    max_arrival_rate_per_s: jnp.ndarray  # whole deployment


def workload_moments(inputs: ModelInputs) -> Moments:
    p = inputs.prompt_values
    wp = inputs.prompt_probabilities
    o = inputs.output_values
    wo = inputs.output_probabilities
    mean_prompt = jnp.sum(wp * p)
    mean_output = jnp.sum(wo * o)
    mean_output_sq = jnp.sum(wo * o * o)
    half_block = inputs.block_size / 2.0
    return Moments(
        mean_prompt=mean_prompt,
        mean_output=mean_output,
        # Clipped at 0: in float32 the difference of two nearly equal numbers can come out
        # negative, as for a fixed length of 834,112 tokens, and its square root is NaN.
        output_variance=jnp.maximum(mean_output_sq - mean_output**2, 0.0),
        running_context=mean_prompt + mean_output_sq / (2.0 * mean_output) + half_block,
        new_request_tokens=mean_prompt + half_block,
        mean_inverse_output=jnp.sum(wo / jnp.maximum(o - 1.0, 1.0)),
    )


# Expected maximum of n independent standard normal variables, for n = 1, 2, 4, ..., 1024
# (order statistics tables; Harter, 1961). Interpolated in log2(n).
_EXPECTED_MAX_OF_NORMALS = (0.0, 0.5642, 1.0294, 1.4236, 1.7660, 2.0697, 2.3412, 2.5848,
                            2.8045, 3.0042, 3.1874)


def expected_max_of_normals(n):
    table = jnp.asarray(_EXPECTED_MAX_OF_NORMALS)
    position = jnp.log2(jnp.maximum(n, 1.0))
    return jnp.interp(position, jnp.arange(table.shape[0], dtype=jnp.float32), table)


def running_limit(max_num_seqs, max_num_batched_tokens):
    """Return the most requests one replica runs at once.

    Running requests are scheduled first and each takes at least one token of the
    budget per step, and waiting ones are admitted only while budget is left, so no
    more than ``max_num_batched_tokens`` requests run, whatever ``max_num_seqs`` allows.
    """
    return jnp.minimum(max_num_seqs, max_num_batched_tokens)


def preemptions_per_completion(moments: Moments, headroom_tokens):
    """Return the preempted requests per completed one when ``headroom_tokens`` are kept free.

    Each victim is taken to hold a running context.
    """
    return recomputed_per_completion(moments, 1.0, headroom_tokens) / moments.running_context


def recomputed_per_completion(moments: Moments, uncovered, headroom_tokens):
    """Return the KV tokens preempted, and later recomputed, per completion in a full pool.

    With requests waiting, the admissions after a completion take every free block
    above the headroom, so the growth of the running set until the next completion
    must come from victims: the running set grows E[o] tokens per completion. The share
    of it that the completions' frees do not cover (``uncovered``) and that exceeds the
    headroom is preempted. With completions as a Poisson stream, the growth between two
    of them is exponential, so E[(growth - headroom)+] = E[o] x exp(-headroom / E[o]).
    """
    return uncovered * moments.mean_output * jnp.exp(-headroom_tokens / moments.mean_output)


def _victim_context(tail, thrash, recomputed):
    """Return the KV tokens per victim: recomputed tokens per completion over preemptions per completion."""
    return jnp.where(thrash > 1e-6, recomputed / jnp.maximum(thrash, 1e-6), tail.victim_context)


# Completions per round above which the freed tokens of a round are taken as normal,
# and the count of Poisson terms summed below it.
MANY_COMPLETIONS_PER_ROUND = 16.0
COMPLETION_TERMS = 40


def _expected_shortfall(level, mean, variance):
    """Return E[(level - X)+] for X normal with ``mean`` and ``variance``."""
    sigma = jnp.sqrt(jnp.maximum(variance, 1e-12))
    z = (level - mean) / sigma
    cdf = 0.5 * (1.0 + erf(z / jnp.sqrt(2.0)))
    pdf = jnp.exp(-0.5 * z * z) / jnp.sqrt(2.0 * jnp.pi)
    return (level - mean) * cdf + sigma * pdf


def uncovered_growth_share(inputs: ModelInputs, moments: Moments, growth):
    """Return the share of a round's KV growth that the previous round's completions do not cover.

    Blocks freed by the requests that finish in a round return before the next round
    schedules its running requests, so only growth beyond them can force a preemption.
    With few completions per round the share is about 1; with many it falls, because
    a round's frees and growth then nearly cancel.
    """
    rate = growth / moments.mean_output
    prompt_variance = jnp.maximum(
        jnp.sum(inputs.prompt_probabilities * inputs.prompt_values**2) - moments.mean_prompt**2, 0.0)
    freed_mean = moments.mean_prompt + moments.mean_output + 0.5 * inputs.block_size
    freed_variance = prompt_variance + moments.output_variance
    k = jnp.arange(COMPLETION_TERMS, dtype=jnp.float32)
    poisson = jnp.exp(k * jnp.log(jnp.maximum(rate, 1e-30)) - rate - gammaln(k + 1.0))
    sums = jnp.where(k > 0, _expected_shortfall(growth, k * freed_mean, k * freed_variance), growth)
    few = jnp.sum(poisson * sums)
    many = _expected_shortfall(growth, rate * freed_mean, rate * (freed_variance + freed_mean**2))
    shortfall = jnp.where(rate < MANY_COMPLETIONS_PER_ROUND, few, many)
    return jnp.clip(shortfall / jnp.maximum(growth, 1e-30), 0.0, 1.0)


class TailPreemptions(NamedTuple):
    per_request: jnp.ndarray  # preemptions of one request admitted while the pool is full
    victim_context: jnp.ndarray  # KV tokens a request holds when it is preempted
    off_rounds: jnp.ndarray  # rounds the request spends preempted, waiting to be readmitted


# Quadrature points of the tail-preemption integral, on a grid that is dense near t = 0,
# where the density of the crossing level is largest. 32 points agree with 512 to 1 %
# on the reference cases (tests/reference).
TAIL_TIME_POINTS = 32


def tail_preemptions(inputs: ModelInputs, moments: Moments, running, slack_tokens) -> TailPreemptions:
    """Count the preemptions of a request admitted at the end of a full pool.

    A preempted request returns to the front of the queue and is readmitted first, so
    the running set is always the longest prefix, in first-admission order, of the
    requests whose KV fits. A request admitted at its end, ``slack_tokens`` below the
    pool, is preempted whenever the ``running`` requests ahead of it outgrow that
    slack: each grows one token a round until it ends and frees its prompt plus output.
    Over t rounds, with uniform ages and length-biased outputs, K(t) of them have ended
    (binomial) and U(t) = (running - K) t - (what the K ended ones free). Rice's formula
    counts the up-crossings of the slack: rate(t) = (requests still growing + 1) x
    density of U(t) + g(t) at the slack, where g(t) is the request's own growth while
    it runs. The density is a mixture over K with the freed tokens normal for each K,
    or, when many requests end in t rounds, U(t) as one normal. With no request ended,
    U(t) = running x t, a point that crosses a small slack within the first rounds.
    A preempted request holds E[p] + g + block_size / 2 tokens.
    """
    o = inputs.output_values
    biased = inputs.output_probabilities * o / moments.mean_output
    mean_prompt_sq = jnp.sum(inputs.prompt_probabilities * inputs.prompt_values**2)
    longest = jnp.max(jnp.where(inputs.output_probabilities > 0, o, 0.0))
    slack = slack_tokens

    u = (jnp.arange(TAIL_TIME_POINTS, dtype=jnp.float32) + 0.5) / TAIL_TIME_POINTS
    t = (longest * u * u)[:, None]
    dt = 2.0 * longest * u / TAIL_TIME_POINTS
    left = jnp.maximum(o[None, :] - t, 0.0)  # output a request of age a < left still has
    ended = o[None, :] - left
    # One request ahead, age uniform on [0, o): it grows by t if it outlives t rounds,
    # else it frees its prompt plus age.
    freed = (moments.mean_prompt * ended + 0.5 * (o**2 - left**2)) / o
    freed_sq = ended * (3.0 * mean_prompt_sq + 3.0 * moments.mean_prompt * (o + left)
                        + o**2 + o * left + left**2) / (3.0 * o)
    change = (t * left) / o - freed
    change_sq = (t * t * left) / o + freed_sq
    mean_one = jnp.sum(biased * change, axis=1)
    variance_one = jnp.maximum(jnp.sum(biased * change_sq, axis=1) - mean_one**2, 1e-6)
    t = t[:, 0]
    ended_share = jnp.clip(jnp.sum(biased * ended / o, axis=1), 1e-9, 1.0 - 1e-7)
    freed_mean = jnp.sum(biased * freed, axis=1) / ended_share
    freed_sigma = jnp.sqrt(jnp.maximum(jnp.sum(biased * freed_sq, axis=1) / ended_share - freed_mean**2, 1e-6))

    # Many requests ending in t rounds: U(t) as one normal.
    mean = running * mean_one
    sigma = jnp.sqrt(running * variance_one)
    growing = running * (1.0 - ended_share)
    normal_running = 0.5 * (1.0 + erf((slack - mean) / (sigma * jnp.sqrt(2.0))))

    # Few: K ended, binomial over ``running`` requests, each K-term normal in the freed tokens.
    k = jnp.arange(1, COMPLETION_TERMS + 1, dtype=jnp.float32)[None, :]
    possible = k <= running
    log_terms = (gammaln(running + 1.0) - gammaln(k + 1.0) - gammaln(jnp.maximum(running - k, 0.0) + 1.0)
                 + k * jnp.log(ended_share)[:, None] + (running - k) * jnp.log1p(-ended_share)[:, None])
    p_k = jnp.where(possible, jnp.exp(log_terms), 0.0)
    k_sigma = jnp.sqrt(k) * freed_sigma[:, None]
    # U(t) <= slack when the K ended requests free at least (running - K) t - slack.
    need = (running - k) * t[:, None] - slack - k * freed_mean[:, None]
    mixture_running = jnp.sum(p_k * 0.5 * (1.0 - erf(need / (k_sigma * jnp.sqrt(2.0)))), axis=1)
    none_ended = jnp.exp(running * jnp.log1p(-ended_share))
    mixture_running = mixture_running + none_ended * (running * t <= slack)
    few = running * ended_share < MANY_COMPLETIONS_PER_ROUND
    running_probability = jnp.where(few, mixture_running, normal_running)

    own_growth = jnp.cumsum(running_probability * dt) - 0.5 * running_probability * dt
    level = (mean + own_growth - slack) / sigma
    normal_rate = (growing + 1.0) * jnp.exp(-0.5 * level * level) / (sigma * jnp.sqrt(2.0 * jnp.pi))
    z = (need + own_growth[:, None]) / k_sigma
    mixture_rate = jnp.sum(p_k * (running - k + 1.0) * jnp.exp(-0.5 * z * z) / (k_sigma * jnp.sqrt(2.0 * jnp.pi)),
                           axis=1)
    rate = jnp.where(few, mixture_rate, normal_rate)

    # With none ended, U(t) + g(t) = (running + 1) t reaches the slack at t0.
    t0 = slack / (running + 1.0)
    ended_at_t0 = jnp.clip(jnp.sum(biased * jnp.minimum(t0, o) / o), 0.0, 1.0 - 1e-7)
    first_crossing = jnp.where(t0 < longest, jnp.exp(running * jnp.log1p(-ended_at_t0)), 0.0)

    per_request = jnp.sum(rate * dt) + first_crossing
    victim_growth = (jnp.sum(rate * own_growth * dt) + first_crossing * t0) / jnp.maximum(per_request, 1e-12)
    return TailPreemptions(
        per_request=per_request,
        victim_context=moments.mean_prompt + victim_growth + 0.5 * inputs.block_size,
        off_rounds=jnp.sum((1.0 - running_probability) * dt),
    )


def _preempted_seconds(tail: TailPreemptions, uncovered, preemptions, steady, completion_rate):
    """Seconds a request admitted at the end of a full pool spends preempted after its first token.

    It is out while the requests ahead of it outgrow its slack: ``tail.off_rounds``
    rounds, scaled like the preemption count by the growth that completions leave
    uncovered. After each of its ``preemptions`` it also waits for the next completion
    to free blocks before it is recomputed.
    """
    return tail.off_rounds * uncovered * steady.step.total + preemptions / completion_rate


# Poisson terms of the prefill bursts in one round, in a window around the mean.
BURST_TERMS = 16


def bursty_round(inputs, layout, tp, pp, budget, decodes, bursts, prefill, burst_requests, kv_context,
                 prefill_context) -> StepTime:
    """Time a round whose ``prefill`` tokens arrive in bursts, ``bursts`` of them per round on average.

    In a steady state each completion frees blocks that the admissions (and
    recomputations) after it take at once, and vLLM prefills each of them whole within
    the token budget. So a round carries k bursts of prefill / bursts tokens, k Poisson,
    and when bursts are rare most rounds carry none. A round's time is a maximum of
    compute and memory time: decodes alone are memory-bound, a round with a burst can be
    compute-bound, and the mean round is longer than one round carrying the mean prefill
    (Jensen's inequality). A burst larger than the budget's room spills into the rounds
    after it, filling the least loaded first up to one level, so every round's prefill
    is at least that level. The terms are a window of ``BURST_TERMS`` counts around the
    mean, their weights normalized.
    """
    burst = prefill / jnp.maximum(bursts, 1e-9)
    room = jnp.maximum(budget - decodes, 1.0)
    k = jnp.maximum(jnp.floor(bursts) - BURST_TERMS // 2, 0.0) + jnp.arange(BURST_TERMS, dtype=jnp.float32)
    log_weights = k * jnp.log(jnp.maximum(bursts, 1e-30)) - bursts - gammaln(k + 1.0)
    weights = jnp.exp(log_weights - jnp.max(log_weights))
    weights = weights / jnp.sum(weights)
    carried = jnp.minimum(k * burst, room)  # ascending in k
    # The spill level: sum of weights x max(carried, level) = prefill. On the segment
    # between carried[j] and carried[j + 1], the level is linear in the prefill.
    below = jnp.cumsum(weights)
    above = jnp.sum(weights * carried) - jnp.cumsum(weights * carried)
    levels = (prefill - above) / below
    upper = jnp.concatenate([carried[1:], jnp.full(1, jnp.inf)])
    on_segment = (levels >= carried) & (levels <= upper)
    level = jnp.minimum(jnp.max(jnp.where(on_segment, levels, 0.0)), room)
    tokens = jnp.maximum(carried, level)
    requests = tokens * burst_requests / jnp.maximum(burst, 1e-9)
    times = jax.vmap(lambda t, r: round_time(inputs, layout, tp, pp, decodes, t, r, kv_context, prefill_context))(
        tokens, requests)
    return jax.tree_util.tree_map(lambda t: jnp.sum(weights * t), times)


class _Round(NamedTuple):
    step: StepTime
    decodes: jnp.ndarray
    token_time: jnp.ndarray  # seconds in the running set per output token, prefill included
    budget_bound: jnp.ndarray  # the token budget, not the running count, caps decodes
    # Seconds between two tokens of a request past its prefill: one round, because the
    # running list is scheduled oldest first and the budget runs out on the newest
    # requests, which are the ones still in prefill.
    decode_time: jnp.ndarray
    # Seconds from admission to the first token when the budget binds: the requests
    # that do not decode are in prefill, and Little's law over the admissions gives
    # their time there.
    prefill_wait: jnp.ndarray


def _steady_round(inputs, layout, tp, pp, max_num_batched_tokens, running, moments, thrash,
                  victim_context=None, context=None):
    """A round at steady state: ``running`` requests, admissions replacing completions.

    Each decoded token brings (E[p] + thrash x victim_context) / E[o] prefill tokens
    with it (the admissions that replace completions, and the recomputation of
    preempted requests, a running context each unless ``victim_context`` gives
    another size). Decodes and that prefill share the token budget, so when the budget
    cannot carry both, fewer requests decode per round and the rest wait.
    """
    if victim_context is None:
        victim_context = moments.running_context
    if context is None:
        context = moments.running_context
    prefill_per_decode = (moments.mean_prompt + thrash * victim_context) / moments.mean_output
    budget_decodes = max_num_batched_tokens / (1.0 + prefill_per_decode)
    # A round runs whole requests. Below one running request the replica idles between
    # rounds, so a round is timed with at least one request. ``decodes`` (per round of
    # wall time) is then that round's decodes times the share of time the replica is busy.
    busy = jnp.maximum(running, 1.0)
    busy_decodes = jnp.maximum(jnp.minimum(busy, budget_decodes), 1e-6)
    completions = busy_decodes / moments.mean_output
    prefill = busy_decodes * prefill_per_decode
    prefill_requests = completions * (1.0 + thrash)
    prefill_context = 0.5 * (moments.mean_prompt + thrash * victim_context) / (1.0 + thrash)
    step = bursty_round(inputs, layout, tp, pp, max_num_batched_tokens, busy_decodes, completions, prefill,
                        1.0 + thrash, busy_decodes * context, prefill_context)
    token_time = step.total * busy / busy_decodes
    prefill_wait = jnp.maximum(busy - busy_decodes, 0.0) * step.total / jnp.maximum(prefill_requests, 1e-9)
    decodes = busy_decodes * jnp.minimum(running, 1.0)
    return _Round(step=step, decodes=decodes, token_time=token_time, budget_bound=busy > budget_decodes,
                  decode_time=step.total, prefill_wait=prefill_wait)


def _prefill_round_time(inputs, layout, tp, pp, tokens, mean_prompt):
    return round_time(inputs, layout, tp, pp, 0.0, tokens, tokens / mean_prompt, 0.0,
                      mean_prompt / 2.0).total


# Bisection steps of the weighted quantile search; 40 halvings of the value range leave an
# interval far below float32 resolution, and the result snaps to a sample value.
QUANTILE_BISECTION_STEPS = 40


def _weighted_quantiles(values, weights):
    """Return the smallest sample whose weighted CDF reaches each of ``QUANTILES``.

    Bisection over the value range instead of a sort: XLA's sort is slow on CPU, while
    comparisons against a few thresholds vectorize well.
    """
    targets = jnp.asarray(QUANTILES, dtype=values.dtype)
    total = jnp.sum(weights)
    low = jnp.full(targets.shape, jnp.min(values))
    high = jnp.full(targets.shape, jnp.max(values))

    def halve(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        cdf = jnp.sum(weights[None, :] * (values[None, :] <= middle[:, None]), axis=1) / total
        reached = cdf >= targets
        return jnp.where(reached, low, middle), jnp.where(reached, middle, high)

    _, high = jax.lax.fori_loop(0, QUANTILE_BISECTION_STEPS, halve, (low, high))
    at_or_above = values[None, :] >= high[:, None] - 1e-6 * jnp.abs(high[:, None])
    snapped = jnp.min(jnp.where(at_or_above, values[None, :], jnp.inf), axis=1)
    return [snapped[i] for i in range(len(QUANTILES))]


def _latency(mean, values, weights) -> Latency:
    p50, p90, p99 = _weighted_quantiles(values, weights)
    return Latency(mean=mean, p50=p50, p90=p90, p99=p99)


def _survival(inputs, moments, k, residual):
    """Share of a cohort still running after ``k`` rounds of age.

    A fresh cohort (all admitted together) survives while o > k; a residual cohort
    (the running set at a random moment) has residual life density P(O > x) / E[O].
    """
    o = inputs.output_values
    w = inputs.output_probabilities
    fresh = jnp.sum(w * (o > k))
    remaining = jnp.sum(w * jnp.maximum(o - k, 0.0)) / moments.mean_output
    return jnp.where(residual, remaining, fresh)


class _Drain(NamedTuple):
    seconds: jnp.ndarray
    tokens: jnp.ndarray
    peak_usage: jnp.ndarray  # peak KV demand over capacity
    overflow: jnp.ndarray  # requests that did not fit at the peak of KV demand
    overflow_completions: jnp.ndarray  # completions while some requests waited for KV
    ages: jnp.ndarray  # [n] output lengths at which ``finish_s`` is given
    finish_s: jnp.ndarray  # [n] time from the drain's start until a request of that age ends


def _drain(inputs, layout, tp, pp, budget, capacity, moments, cohort, residual, thrash) -> _Drain:
    """Integrate a cohort of ``cohort`` requests running with no further admissions.

    The cohort advances one token per round while it fits. When its KV demand
    (alive requests x context) exceeds the pool, only capacity / context requests run and
    the rest wait, so a token of cohort age takes demand / capacity rounds; the budget
    of ``max_num_batched_tokens`` decodes per round time-shares it the same way. The
    integral runs over the sorted output lengths and stops when fewer than one request
    is still alive. While requests wait, each completion readmits them greedily and
    ``thrash`` preemptions per completion follow, each recomputing a running context.
    """
    grid = jnp.concatenate([jnp.zeros(1), jnp.sort(inputs.output_values)])
    start = grid[:-1]
    end = grid[1:]
    middle = 0.5 * (start + end)
    length = end - start

    survival = jax.vmap(lambda k: _survival(inputs, moments, k, residual))
    # Just after the interval's start and just before its end. The neighbouring float32
    # values, not a fixed offset: an offset of 1e-3 tokens vanished at 32,768 tokens,
    # where float32 values are 0.004 apart, and a single request of 33,000 tokens then
    # finished in half the time of one of 32,000.
    alive_start = cohort * survival(jnp.nextafter(start, jnp.inf))
    alive_end = cohort * survival(jnp.maximum(jnp.nextafter(end, -jnp.inf), start))
    alive = cohort * survival(middle)

    # Only the stretch where at least one request is still running counts.
    crossing = (alive_start - LAST_REQUEST_THRESHOLD) / jnp.maximum(alive_start - alive_end, 1e-9)
    counted = jnp.where(
        alive_end >= LAST_REQUEST_THRESHOLD,
        length,
        jnp.where(alive_start >= LAST_REQUEST_THRESHOLD, length * jnp.clip(crossing, 0.0, 1.0), 0.0),
    )

    context = jnp.where(residual, moments.running_context + middle, moments.new_request_tokens + middle)
    demand = alive * context
    running = jnp.maximum(jnp.minimum(jnp.minimum(alive, capacity / context), budget), 1.0)
    rounds_per_token = jnp.maximum(alive / running, 1.0)
    rounds = jnp.maximum(counted * rounds_per_token, 1e-9)

    overflowing = (demand > capacity) & (counted > 0)
    overflow = jnp.max(jnp.where(overflowing, (demand - capacity) / context, 0.0))
    # Requests whose output equals a grid point end at that point's round.
    completed_in_interval = jnp.maximum(cohort * (survival(start) - survival(end)), 0.0)
    recomputed = jnp.where(overflowing, completed_in_interval * thrash, 0.0)
    prefill_per_round = jnp.minimum(recomputed * moments.running_context / rounds,
                                    jnp.maximum(budget - running, 0.0))
    step = jax.vmap(
        lambda d, kv, c, r: round_time(inputs, layout, tp, pp, d, c, r, kv, 0.5 * moments.running_context).total
    )(running, running * context, prefill_per_round, recomputed / rounds)
    interval_s = counted * rounds_per_token * step
    finish = jnp.cumsum(interval_s)
    return _Drain(
        seconds=jnp.sum(interval_s),
        tokens=jnp.sum(counted * alive),
        peak_usage=jnp.max(jnp.where(counted > 0, demand, 0.0)) / capacity,
        overflow=overflow,
        overflow_completions=jnp.sum(jnp.where(overflowing, completed_in_interval, 0.0)),
        ages=end,
        finish_s=finish,
    )


class _Shrink(NamedTuple):
    seconds: jnp.ndarray
    tokens: jnp.ndarray
    ages: jnp.ndarray  # tokens each surviving request gained during the shrink


# Quadrature points of the shrink phase.
SHRINK_POINTS = 16


def _shrink(inputs, layout, tp, pp, budget, usable, moments, admitted, running) -> _Shrink:
    """Integrate the over-admission transient of a queued batch.

    Admission takes every free block at the start, so ``admitted`` requests hold their
    prompts when decoding begins. They grow together, and each block they need comes
    from preempting the newest, so at age t about usable / (p + t) still run, until the
    steady count ``running`` is reached at age running_context - p.
    """
    shrinking = admitted > running * 1.0001
    end_age = jnp.where(shrinking, jnp.maximum(usable / running - moments.new_request_tokens, 0.0), 0.0)
    fractions = (jnp.arange(SHRINK_POINTS) + 0.5) / SHRINK_POINTS
    ages = end_age * fractions
    alive = jnp.clip(usable / (moments.new_request_tokens + ages), running, admitted)
    decodes = jnp.maximum(jnp.minimum(alive, budget), 1.0)
    step = jax.vmap(
        lambda d, kv: round_time(inputs, layout, tp, pp, d, 0.0, 0.0, kv, 0.0).total
    )(decodes, jnp.minimum(alive * (moments.new_request_tokens + ages), usable) * decodes / alive)
    width = end_age / SHRINK_POINTS
    seconds = jnp.sum(width * alive / decodes * step)
    return _Shrink(
        seconds=seconds,
        tokens=jnp.sum(width * alive),
        ages=end_age,
    )


def _lockstep_peak(inputs: ModelInputs, moments: Moments, requests):
    """Return the peak KV demand, in tokens, of ``requests`` admitted together.

    At age k every request still running has its prompt plus k tokens in the cache, so
    the peak lies at one of the output lengths, just before the requests of that length
    finish.
    """
    o = inputs.output_values
    w = inputs.output_probabilities
    at_least = jnp.sum(jnp.where(o[None, :] >= o[:, None], w[None, :], 0.0), axis=1)
    demand = requests * at_least * (moments.new_request_tokens + o)
    return jnp.maximum(jnp.max(jnp.where(w > 0, demand, 0.0)), requests * moments.new_request_tokens)


# Points of the admission-order grid in ``_lockstep_victims``.
VICTIM_ORDER_POINTS = 32


def _lockstep_overflow(inputs: ModelInputs, moments: Moments, orders, usable):
    """Return the age at which admission order ``orders`` first overflows the pool, and its survival.

    At age k the request of admission order i still runs while the requests up to it
    hold i x P(o >= k) x (prompt + k) tokens or fewer; LIFO preempts from the end, so
    the requests behind it do not matter. Between two output lengths P(o >= k) is
    constant, so on each such segment the demand grows linearly and reaches the pool at
    k = usable / (i x P(o >= k)) - prompt. The earliest such age is the order's first
    preemption, infinite for an order that always fits, and the order is still running
    then with probability P(o >= k).
    """
    o = inputs.output_values
    w = inputs.output_probabilities
    at_least = jnp.where(w > 0, jnp.sum(jnp.where(o[None, :] >= o[:, None], w[None, :], 0.0), axis=1), 0.0)
    segment_start = jnp.concatenate([jnp.zeros(1), o[:-1]])
    crossing = usable / jnp.maximum(orders[:, None] * at_least[None, :], 1e-9) - moments.new_request_tokens
    crossing = jnp.maximum(crossing, segment_start[None, :])
    crossing = jnp.where((at_least[None, :] > 0) & (crossing <= o[None, :]), crossing, jnp.inf)
    age = jnp.min(crossing, axis=1)
    survival = jnp.where(jnp.isfinite(age), at_least[jnp.argmin(crossing, axis=1)], 0.0)
    return age, survival


def _lockstep_victims(inputs: ModelInputs, moments: Moments, requests, usable):
    """Return how many of ``requests`` admitted together are preempted at least once, and their mean age then.

    Orders below usable / max_k P(o >= k)(prompt + k) always fit. Every later order is
    preempted if it is still running at the age where it first overflows the pool (see
    ``_lockstep_overflow``).
    """
    first = jnp.minimum(usable / _lockstep_peak(inputs, moments, 1.0), requests)
    u = (jnp.arange(VICTIM_ORDER_POINTS, dtype=jnp.float32) + 0.5) / VICTIM_ORDER_POINTS
    age, survival = _lockstep_overflow(inputs, moments, first + (requests - first) * u, usable)
    mean_age = jnp.sum(jnp.where(survival > 0, survival * age, 0.0)) / jnp.maximum(jnp.sum(survival), 1e-9)
    return (requests - first) * jnp.mean(survival), mean_age


# Points of the age grid on which ``_refill_demand`` follows a batch's KV demand.
REFILL_POINTS = 128


def _refill_demand(inputs: ModelInputs, moments: Moments, first, requests):
    """Return the peak KV demand of a refilled batch, in tokens, and a running request's mean context.

    The batch starts ``first`` requests at once and admits the rest one per completion
    until all ``requests`` have started, and every running request grows one token a
    round. So on a grid of rounds the admissions a(t) follow a renewal equation: they
    equal the completions while requests remain, and the completions are those of the
    first requests at their output lengths plus those of the requests admitted before.
    The demand is the sum of prompt + age over the running requests. A batch of a few
    generations can stay below the pool even when its steady mix of ages would overflow
    it, because the first requests grow together and are replaced only gradually. For
    the same reason their mean context while requests wait is below the steady one.
    """
    o = inputs.output_values
    w = inputs.output_probabilities
    longest = jnp.max(jnp.where(w > 0, o, 0.0))
    step = 2.0 * longest / REFILL_POINTS
    t = jnp.arange(REFILL_POINTS, dtype=jnp.float32) * step
    # Completions in (t - step, t] and survivors beyond t, per request started at 0.
    survival = jnp.sum(jnp.where(o[None, :] > t[:, None], w[None, :], 0.0), axis=1)
    ended = jnp.concatenate([jnp.zeros(1), survival[:-1] - survival[1:]])
    tokens_per_start = survival * (moments.new_request_tokens + t)  # KV of one request started at 0
    queued = jnp.maximum(requests - first, 0.0)

    def admit(carry, j):
        admitted, total = carry
        lag = j - jnp.arange(REFILL_POINTS)
        completions = first * ended[j] + jnp.sum(jnp.where(lag > 0, admitted * ended[jnp.clip(lag, 0)], 0.0))
        now = jnp.minimum(completions, jnp.maximum(queued - total, 0.0))
        return (admitted.at[j].set(now), total + now), None

    (admitted, _), _ = jax.lax.scan(admit, (jnp.zeros(REFILL_POINTS), 0.0), jnp.arange(REFILL_POINTS))
    lag = jnp.arange(REFILL_POINTS)[:, None] - jnp.arange(REFILL_POINTS)[None, :]
    demand = first * tokens_per_start + jnp.sum(
        jnp.where(lag >= 0, admitted[None, :] * tokens_per_start[jnp.clip(lag, 0)], 0.0), axis=1)
    # While requests wait, ``first`` requests run; their mean context over that time.
    waiting = (jnp.cumsum(admitted) < queued * (1.0 - 1e-4)) & (queued > 0)
    mean_context = jnp.where(jnp.any(waiting),
                             jnp.sum(jnp.where(waiting, demand, 0.0)) / jnp.maximum(jnp.sum(waiting) * first, 1e-9),
                             moments.running_context)
    return jnp.max(demand), mean_context


def batch_replica(inputs: ModelInputs, layout: Layout, memory: Memory, dp, tp, pp,
                  max_num_seqs, max_num_batched_tokens) -> ReplicaResult:
    """Offline batch: every request submitted at t = 0, split evenly over replicas.

    When max_num_seqs and the pool admit the whole replica at once, it runs as one
    cohort (see ``_drain``). Otherwise it fills, shrinks to the steady running count if
    it admitted more than the pool can grow (see ``_shrink``), runs at steady state
    while requests wait, and drains the last running cohort.
    """
    moments = workload_moments(inputs)
    capacity = jnp.maximum(memory.kv_capacity_tokens, 1.0)
    usable = capacity * (1.0 - inputs.watermark)
    budget = max_num_batched_tokens
    requests = jnp.ceil(inputs.num_requests / dp)

    demand = jnp.minimum(running_limit(max_num_seqs, budget), requests)
    kv_running = usable / moments.running_context
    # A batch whose refills never fill the pool is not bound by it, whatever its steady mix.
    refill_peak, refill_context = _refill_demand(inputs, moments, demand, requests)
    never_full = refill_peak <= usable
    running = jnp.where(never_full, demand, jnp.minimum(demand, kv_running))
    kv_bound = ~never_full & (demand > kv_running)
    admitted = jnp.minimum(demand, usable / moments.new_request_tokens)
    # A replica admitted whole runs as one cohort only while its KV demand fits. Once it
    # overflows, LIFO preemption keeps the oldest requests running and makes the newest
    # wait, so the replica behaves like a queue, not like an even share of the pool.
    single_cohort = (admitted >= requests) & (_lockstep_peak(inputs, moments, requests) <= usable)

    headroom = inputs.watermark * capacity + jnp.maximum(usable - demand * moments.running_context, 0.0)
    # Each queued request is admitted at the end of a full pool and preempted as the
    # requests ahead of it outgrow its slack, less the growth that the previous round's
    # completions cover. The victims are those at the end of the running set, and
    # together they hold the growth that completions do not cover.
    tail = tail_preemptions(inputs, moments, running, headroom)
    uncovered = uncovered_growth_share(inputs, moments, jnp.minimum(running, budget))
    thrash = jnp.where(single_cohort | never_full, 0.0, tail.per_request * uncovered)
    victim_context = _victim_context(tail, thrash, recomputed_per_completion(moments, uncovered, headroom))
    steady = _steady_round(inputs, layout, tp, pp, budget, running, moments, thrash, victim_context,
                           jnp.where(never_full, refill_context, moments.running_context))
    tokens_per_s = steady.decodes / steady.step.total
    completion_rate = tokens_per_s / moments.mean_output
    preempted_s = jnp.where(single_cohort | never_full, 0.0,
                            _preempted_seconds(tail, uncovered, thrash, steady, completion_rate))

    # Fill: prefill of the first admissions, in rounds of at most the token budget.
    fill_tokens = admitted * moments.mean_prompt
    fill_rounds = jnp.maximum(fill_tokens / budget, 1.0)
    fill_time = fill_rounds * _prefill_round_time(
        inputs, layout, tp, pp, fill_tokens / fill_rounds, moments.mean_prompt
    )

    # Over-admission: the shrink preempts ``victims`` requests that already have their
    # first token; they wait at the front of the queue and are recomputed later. The
    # admitted requests grow in lockstep, and LIFO preempts an order only when the orders
    # up to it outgrow the pool, whatever was readmitted behind it. So the first
    # admissions whose demand fits at every age are never preempted, and the shrink
    # keeps more of them than the steady count while their short ones finish.
    shrink = _shrink(inputs, layout, tp, pp, budget, usable, moments, admitted, running)
    victims, victim_age = _lockstep_victims(inputs, moments, jnp.minimum(admitted, requests), usable)
    victims = jnp.maximum(jnp.where(single_cohort, 0.0, jnp.minimum(victims, admitted - running)), 0.0)
    recompute_tokens = victims * (moments.new_request_tokens + victim_age)
    recompute_rounds = jnp.maximum(recompute_tokens / budget, 1.0)
    recompute_time = jnp.where(
        victims > 0,
        recompute_rounds * _prefill_round_time(inputs, layout, tp, pp, recompute_tokens / recompute_rounds,
                                               moments.mean_prompt),
        0.0,
    )

    cohort = jnp.where(single_cohort, requests, running)
    cohort_thrash = preemptions_per_completion(moments, inputs.watermark * capacity)
    drain = _drain(inputs, layout, tp, pp, budget, usable, moments, cohort, ~single_cohort,
                   jnp.where(single_cohort, cohort_thrash, 0.0))

    # The slowest replica sets the makespan: its share of output tokens exceeds the mean
    # by the expected maximum of ``dp`` standard normal variables times the standard
    # deviation of a sum of ``requests`` independent output lengths.
    total_tokens = requests * moments.mean_output
    work_deviation = jnp.sqrt(requests * moments.output_variance)
    slowest_tokens = total_tokens + expected_max_of_normals(dp) * work_deviation
    shrink_tokens = jnp.where(single_cohort, 0.0, jnp.minimum(shrink.tokens, jnp.maximum(
        slowest_tokens - drain.tokens, 0.0)))
    steady_tokens = jnp.where(single_cohort, 0.0,
                              jnp.maximum(slowest_tokens - drain.tokens - shrink_tokens, 0.0))
    steady_time = steady_tokens / tokens_per_s
    shrink_time = jnp.where(single_cohort, 0.0, shrink.seconds * shrink_tokens / jnp.maximum(shrink.tokens, 1.0))
    straggler_time = jnp.where(
        single_cohort, drain.seconds * (slowest_tokens / jnp.maximum(total_tokens, 1.0) - 1.0), 0.0
    )
    makespan = fill_time + shrink_time + recompute_time + steady_time + drain.seconds + straggler_time

    # Each completion while requests wait triggers greedy admission and the preemptions
    # after it; a single cohort preempts once its demand overflows the pool and then on
    # each completion that frees blocks for a waiting request.
    preemptions = dp * jnp.where(
        single_cohort,
        drain.overflow + drain.overflow_completions * cohort_thrash,
        victims + (victims + requests - admitted) * thrash,
    )
    # A single cohort binds on KV only if its lockstep demand outgrows the pool.
    kv_bound = jnp.where(single_cohort, drain.peak_usage > 1.0, kv_bound)
    unbound_usage = jnp.where(never_full, refill_peak, running * moments.running_context) / capacity
    peak_usage = jnp.clip(jnp.where(single_cohort, drain.peak_usage, jnp.where(kv_bound, 1.0, unbound_usage)),
                          0.0, 1.0)

    # A queued request's prompt takes its own prefill rounds once it is admitted.
    prompt_rounds = jnp.maximum(jnp.ceil(moments.mean_prompt / jnp.maximum(budget - steady.decodes, 1.0)), 1.0)
    ttft_values, e2e_values = _batch_latencies(
        inputs, moments, requests, admitted, running, victims, single_cohort, fill_time, shrink_time,
        recompute_time, steady_time, shrink.ages, steady, preempted_s, completion_rate, drain,
        jnp.maximum((prompt_rounds - 1.0) * steady.step.total, steady.prefill_wait - steady.step.total),
        fill_rounds, usable,
    )
    # No request ends after the last one: the phases' joins can overshoot by a little
    # (the slowest replica's extra work is spread over the steady phase), so latencies
    # are capped at the makespan.
    ttft_values = jnp.minimum(ttft_values, makespan)
    e2e_values = jnp.minimum(e2e_values, makespan)
    weights = jnp.ones(ORDER_POINTS) / ORDER_POINTS
    ttft = _latency(jnp.mean(ttft_values), ttft_values, weights)
    outputs = inputs.output_values
    grid_weights = (weights[:, None] * inputs.output_probabilities[None, :]).reshape(-1)
    tpot_values = ((e2e_values - ttft_values[:, None]) / jnp.maximum(outputs - 1.0, 1.0)[None, :]).reshape(-1)
    tpot = _latency(jnp.sum(tpot_values * grid_weights), tpot_values, grid_weights)
    e2e_flat = e2e_values.reshape(-1)
    e2e = _latency(jnp.sum(e2e_flat * grid_weights), e2e_flat, grid_weights)

    throughput = inputs.num_requests * moments.mean_output / makespan
    return ReplicaResult(
        makespan_s=makespan,
        output_tokens_per_s=throughput,
        ttft=ttft,
        tpot=tpot,
        e2e=e2e,
        peak_kv_usage=peak_usage,
        preemptions=preemptions,
        preemptions_per_request=preemptions / inputs.num_requests,
        running_requests=running,
        step=steady.step,
        kv_bound=kv_bound,
        budget_bound=steady.budget_bound,
        keeps_up=jnp.array(True),
        max_arrival_rate_per_s=dp * completion_rate,
    )


def _batch_latencies(inputs, moments, requests, admitted, running, victims, single_cohort, fill_time,
                     shrink_time, recompute_time, steady_time, shrink_age, steady, preempted_s,
                     completion_rate, drain, prompt_rounds_time, fill_rounds, usable):
    """TTFT by admission order and end-to-end latency by (admission order, output length).

    Requests are served in order. The first ``admitted`` get their first token during the
    fill. Of those, the last ``victims`` are preempted by the shrink, each at the age its
    order first overflows the pool. They wait at the front of the queue for completions to
    free their blocks; the rest are admitted one
    per completion after them. Every request decodes at the steady token time until the
    queue is empty, then at the drain's pace: a request with k tokens left when the
    drain starts ends when the drain's cohort reaches age k. A single cohort finishes a
    request of output o when the cohort reaches age o.
    """
    outputs = inputs.output_values[None, :]
    # Requests are whole: each point is the index of a request, so fewer requests than
    # points share points, and a single request gets one latency at every point.
    order = jnp.floor((jnp.arange(ORDER_POINTS) + 0.5) / ORDER_POINTS * requests)[:, None]
    first_token = steady.step.total
    # Admissions from the queue are spread over the steady phase, which ends with the
    # last one; this keeps every request's latency within the makespan.
    shrink_survivors = admitted - victims
    admission_rate = jnp.maximum(requests - shrink_survivors, 1.0) / jnp.maximum(steady_time, 1e-9)
    admission_rate = jnp.where(steady_time > 0, admission_rate, completion_rate)

    in_fill = order < admitted
    # The round that completes a prompt samples its first token, so a request admitted in
    # the fill gets it at the end of the round that computes its prompt's last chunk.
    fill_round = jnp.ceil(fill_rounds * (order + 1.0) / jnp.maximum(admitted, 1.0))
    fill_ttft = jnp.minimum(fill_round * fill_time / fill_rounds, fill_time)
    queue_start = fill_time + shrink_time + recompute_time
    # Admissions from the queue start when the fill ends, because early completions free
    # slots during the shrink too, and readmitted victims go first. Victims and fresh
    # requests are admitted at one rate from the fill to the drain.
    admitting_time = shrink_time + recompute_time + steady_time
    queue_rate = jnp.where(admitting_time > 0,
                           jnp.maximum(requests - shrink_survivors, 1.0) / jnp.maximum(admitting_time, 1e-9),
                           completion_rate)
    queued_ttft = fill_time + (order - admitted + victims) / queue_rate + prompt_rounds_time
    ttft = jnp.where(in_fill, fill_ttft, queued_ttft + first_token)

    # Where each request starts its steady decoding, and the tokens it already has.
    kept = order < shrink_survivors
    is_victim = in_fill & ~kept
    victim_start = queue_start + (order - shrink_survivors) / admission_rate
    # A victim keeps the tokens it had generated when its order first overflowed the pool.
    overflow_age, _ = _lockstep_overflow(inputs, moments, order[:, 0] + 1.0, usable)
    victim_age = jnp.minimum(overflow_age, shrink_age)[:, None]
    decode_start = jnp.where(kept, queue_start, jnp.where(is_victim, victim_start, ttft))
    tokens_before = jnp.where(kept, jnp.minimum(outputs - 1.0, shrink_age),
                              jnp.where(is_victim, jnp.minimum(outputs - 1.0, victim_age), 0.0))

    # A request admitted at the end of a full pool spends ``preempted_s`` preempted. The
    # oldest requests, which the shrink keeps, are never the newest, so LIFO never preempts them.
    token_time = steady.decode_time + jnp.where(kept, 0.0, preempted_s) / jnp.maximum(outputs - 1.0, 1.0)
    drain_start = queue_start + steady_time
    remaining = jnp.maximum(outputs - 1.0 - tokens_before, 0.0)
    steady_tokens = jnp.clip((drain_start - decode_start) / token_time, 0.0, remaining)
    drain_tokens = remaining - steady_tokens
    drain_part = jnp.interp(drain_tokens, jnp.concatenate([jnp.zeros(1), drain.ages]),
                            jnp.concatenate([jnp.zeros(1), drain.finish_s]))
    queue_e2e = decode_start + steady_tokens * token_time + drain_part
    # A request admitted in the fill whose output ends within the shrink, before the
    # shrink would preempt it, finishes there, at the shrink's pace per token of age.
    shrink_pace = shrink_time / jnp.maximum(shrink_age, 1.0)
    ends_in_shrink = in_fill & (outputs - 1.0 <= jnp.where(kept, shrink_age, victim_age))
    queue_e2e = jnp.where(ends_in_shrink, fill_ttft + first_token + (outputs - 1.0) * shrink_pace, queue_e2e)

    cohort_finish = jnp.interp(inputs.output_values, drain.ages, drain.finish_s)[None, :]
    cohort_e2e = fill_ttft + first_token + cohort_finish
    e2e = jnp.where(single_cohort, cohort_e2e, jnp.maximum(queue_e2e, ttft))
    ttft = jnp.where(single_cohort, fill_ttft, ttft)
    # A request of one output token ends with its first token; the phases above would
    # otherwise hold it until the fill or the cohort's first round ends.
    e2e = jnp.where(outputs <= 1.0, ttft, e2e)
    return ttft[:, 0], e2e


def _queue_wait(servers, utilization, service_s, service_cv2):
    """Mean wait and wait probability of an M/G/c queue.

    Sakasegawa's approximation of the M/M/c queue length, Lq = rho^sqrt(2(c+1)) / (1 - rho),
    with the Allen-Cunneen factor (1 + cv^2) / 2 for general service times.
    """
    rho = jnp.clip(utilization, 0.0, 0.999999)
    exponent = jnp.sqrt(2.0 * (servers + 1.0)) - 1.0
    wait_probability = jnp.power(rho, exponent)
    mean_wait = wait_probability / (servers * (1.0 - rho)) * service_s * (1.0 + service_cv2) / 2.0
    return mean_wait, wait_probability


def _prompt_prefill_s(inputs, layout, tp, pp, steady, budget, moments):
    """Time from admission to the first token for each prompt length bin.

    A prompt is prefilled in chunks of the budget left after the round's decodes, one
    chunk per round; each of those rounds carries the steady decodes plus the chunk, and
    the round that finishes the prompt also samples its first token.
    """
    chunk_limit = jnp.maximum(budget - steady.decodes, 1.0)
    prompts = inputs.prompt_values
    rounds = jnp.maximum(jnp.ceil(prompts / chunk_limit), 1.0)
    chunks = prompts / rounds
    round_s = jax.vmap(
        lambda chunk: round_time(inputs, layout, tp, pp, steady.decodes, chunk, 1.0,
                                 steady.decodes * moments.running_context, 0.5 * chunk).total
    )(chunks)
    return jnp.maximum(rounds * jnp.maximum(round_s, steady.step.total), steady.prefill_wait)


def _output_cv2(inputs: ModelInputs, moments: Moments):
    o = inputs.output_values
    variance = jnp.sum(inputs.output_probabilities * (o - moments.mean_output) ** 2)
    return variance / moments.mean_output**2


def _e2e_from(inputs, ttft_values, ttft_weights, token_time, preempted_s=0.0):
    """End-to-end latency: TTFT, a token time per further token, and ``preempted_s`` spent preempted."""
    outputs = inputs.output_values
    after_first = jnp.where(outputs > 1.0, (outputs - 1.0) * token_time + preempted_s, 0.0)
    values = (ttft_values[:, None] + after_first[None, :]).reshape(-1)
    weights = (ttft_weights[:, None] * inputs.output_probabilities[None, :]).reshape(-1)
    return _latency(jnp.sum(values * weights), values, weights)


def _steady_result(inputs, dp, running, steady, moments, thrash, preempted_s, ttft, e2e, kv_bound, budget,
                   keeps_up, max_rate, capacity, demand):
    """Assemble a steady-state result; ``preempted_s`` is the time a request spends preempted."""
    completion_rate = steady.decodes / steady.step.total / moments.mean_output
    tpot_value = steady.decode_time + preempted_s * moments.mean_inverse_output
    tpot = Latency(mean=tpot_value, p50=tpot_value, p90=tpot_value, p99=tpot_value)
    return ReplicaResult(
        makespan_s=jnp.nan,
        output_tokens_per_s=dp * steady.decodes / steady.step.total,
        ttft=ttft,
        tpot=tpot,
        e2e=e2e,
        peak_kv_usage=jnp.clip(jnp.where(kv_bound, 1.0, demand * moments.running_context / capacity),
                               0.0, 1.0),
        preemptions=dp * completion_rate * thrash,
        preemptions_per_request=thrash,
        running_requests=running,
        step=steady.step,
        kv_bound=kv_bound,
        budget_bound=steady.budget_bound,
        keeps_up=keeps_up,
        max_arrival_rate_per_s=max_rate,
    )


# Bisection steps for the running count of an open-loop replica; 40 halvings resolve
# any count below 10^12 to better than one request.
RUNNING_BISECTION_STEPS = 40


def _implicit_root(residual, root):
    """Return ``root`` of ``residual(x) = 0`` with the derivatives of the implicit function theorem.

    Bisection returns the root through comparisons, so its derivative with respect to
    the model's inputs is zero. One Newton correction whose value is zero (the residual
    minus itself with gradients stopped) gives dx/dp = -(dr/dp) / (dr/dx), which
    calibration needs for its Jacobian. The returned value equals ``root``.
    """
    root = jax.lax.stop_gradient(root)
    value, slope = jax.jvp(residual, (root,), (jnp.ones_like(root),))
    slope = jax.lax.stop_gradient(slope)
    safe_slope = jnp.where(jnp.abs(slope) > 1e-12, slope, -1.0)
    return root - (value - jax.lax.stop_gradient(value)) / safe_slope


def rate_replica(inputs: ModelInputs, layout: Layout, memory: Memory, dp, tp, pp,
                 max_num_seqs, max_num_batched_tokens) -> ReplicaResult:
    """Open-loop Poisson arrivals, split evenly over replicas, at steady state.

    The running count R solves Little's law, R = rate * E[o] * t_token(R); the replica
    keeps up when that holds with R below both max_num_seqs and the KV pool's count.
    """
    moments = workload_moments(inputs)
    capacity = jnp.maximum(memory.kv_capacity_tokens, 1.0)
    usable = capacity * (1.0 - inputs.watermark)
    budget = max_num_batched_tokens
    rate = inputs.arrival_rate_per_s / dp

    kv_running = usable / moments.running_context
    slots = jnp.maximum(jnp.minimum(running_limit(max_num_seqs, budget), kv_running), 1.0)

    def token_time(running):
        return _steady_round(inputs, layout, tp, pp, budget, running, moments, 0.0).token_time

    def bisect(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        too_few = rate * moments.mean_output * token_time(middle) > middle
        return jnp.where(too_few, middle, low), jnp.where(too_few, high, middle)

    low, high = jax.lax.fori_loop(0, RUNNING_BISECTION_STEPS, bisect, (jnp.array(0.0), slots))
    # Below one running request the token time is that of a request alone, so Little's
    # law gives the count directly. The bisection resolves it only to slots / 2^40.
    light = rate * moments.mean_output * token_time(1.0)
    root = jnp.where(light < 1.0, light, high)
    full_service = moments.mean_output * token_time(slots)
    keeps_up = rate * full_service < slots
    running = jnp.where(keeps_up, _implicit_root(lambda r: rate * moments.mean_output * token_time(r) - r, root),
                        slots)
    max_rate = dp * slots / full_service

    steady = _steady_round(inputs, layout, tp, pp, budget, running, moments, 0.0)
    service = moments.mean_output * steady.token_time
    mean_wait, wait_probability = _queue_wait(slots, running / slots, service, _output_cv2(inputs, moments))
    conditional_wait = mean_wait / jnp.maximum(wait_probability, 1e-12)
    quantile_points = (jnp.arange(ORDER_POINTS) + 0.5) / ORDER_POINTS
    waits = jnp.maximum(
        0.0, -conditional_wait * jnp.log((1.0 - quantile_points) / jnp.maximum(wait_probability, 1e-12))
    )
    prefill_s = _prompt_prefill_s(inputs, layout, tp, pp, steady, budget, moments)
    # An arrival waits for the round in progress to end, half a round on average, unless
    # the replica is idle: with a Poisson number of requests present (M/G/infinity),
    # that happens with probability exp(-running).
    prefill_s = prefill_s + 0.5 * steady.step.total * (1.0 - jnp.exp(-running))
    wait_weights = jnp.ones(ORDER_POINTS) / ORDER_POINTS
    ttft_values = (waits[:, None] + prefill_s[None, :]).reshape(-1)
    weights = (wait_weights[:, None] * inputs.prompt_probabilities[None, :]).reshape(-1)
    ttft = _latency(mean_wait + jnp.sum(inputs.prompt_probabilities * prefill_s), ttft_values, weights)
    e2e = _e2e_from(inputs, ttft_values, weights, steady.decode_time)

    nan = jnp.nan
    unstable = Latency(mean=nan, p50=nan, p90=nan, p99=nan)
    ttft = jax.tree_util.tree_map(lambda a, b: jnp.where(keeps_up, a, b), ttft, unstable)
    e2e = jax.tree_util.tree_map(lambda a, b: jnp.where(keeps_up, a, b), e2e, unstable)
    return _steady_result(inputs, dp, running, steady, moments, 0.0, 0.0, ttft, e2e,
                          running >= kv_running * 0.9999, budget, keeps_up, max_rate, capacity, running)


def concurrency_replica(inputs: ModelInputs, layout: Layout, memory: Memory, dp, tp, pp,
                        max_num_seqs, max_num_batched_tokens) -> ReplicaResult:
    """Closed loop: a fixed number of clients, each sending a new request when one ends."""
    moments = workload_moments(inputs)
    capacity = jnp.maximum(memory.kv_capacity_tokens, 1.0)
    usable = capacity * (1.0 - inputs.watermark)
    budget = max_num_batched_tokens
    clients = inputs.concurrency / dp

    kv_running = usable / moments.running_context
    demand = jnp.minimum(running_limit(max_num_seqs, budget), clients)
    running = jnp.maximum(jnp.minimum(demand, kv_running), 1e-3)
    kv_bound = demand > kv_running
    waiting = clients > running * 1.0001
    headroom = inputs.watermark * capacity + jnp.maximum(usable - demand * moments.running_context, 0.0)
    tail = tail_preemptions(inputs, moments, running, headroom)
    uncovered = uncovered_growth_share(inputs, moments, jnp.minimum(running, budget))
    thrash = jnp.where(waiting, tail.per_request * uncovered, 0.0)
    victim_context = _victim_context(tail, thrash, recomputed_per_completion(moments, uncovered, headroom))

    steady = _steady_round(inputs, layout, tp, pp, budget, running, moments, thrash, victim_context)
    completion_rate = steady.decodes / steady.step.total / moments.mean_output
    # Little's law gives the time a client spends without a running request. Part of it
    # comes after the first token. A request admitted at the end of a full pool is
    # preempted while the requests ahead outgrow its slack, and after each preemption it
    # waits for a completion to free blocks. That part is latency between tokens.
    victim_wait = jnp.where(waiting, _preempted_seconds(tail, uncovered, thrash, steady, completion_rate), 0.0)
    total_wait = jnp.maximum(clients - running, 0.0) / completion_rate
    queue_wait = jnp.maximum(total_wait - victim_wait, 0.0)
    ttft_values = queue_wait + _prompt_prefill_s(inputs, layout, tp, pp, steady, budget, moments)
    weights = inputs.prompt_probabilities
    ttft = _latency(jnp.sum(weights * ttft_values), ttft_values, weights)
    preempted_s = jnp.minimum(victim_wait, total_wait)
    e2e = _e2e_from(inputs, ttft_values, weights, steady.decode_time, preempted_s)

    slots = jnp.maximum(jnp.minimum(running_limit(max_num_seqs, budget), kv_running), 1.0)
    saturated = _steady_round(inputs, layout, tp, pp, budget, slots, moments, 0.0)
    max_rate = dp * slots / (moments.mean_output * saturated.token_time)
    return _steady_result(inputs, dp, running, steady, moments, thrash, preempted_s, ttft, e2e, kv_bound, budget,
                          jnp.array(True), max_rate, capacity, demand)
