"""A time-resolved fluid model of vLLM v1's scheduler, for one plan and several deployments.

The closed form in :mod:`kvplan.costmodel.scheduling` predicts averages; this module
follows the engine over time. It uses the same memory sizing (:func:`hardware.kv_memory`)
and step time (:func:`hardware.round_time`), and the scheduler rules of vLLM v1
(vllm/v1/core/sched/scheduler.py, vllm/v1/core/kv_cache_manager.py):

* Running requests are scheduled first, one decode token each, out of the token budget
  ``max_num_batched_tokens``; admissions get what is left (chunked prefill).
* Admission allocates blocks for the tokens computed now (the prompt, or the prompt and
  the output so far for a preempted request) and stops at ``max_num_seqs`` running
  requests, at the free-block watermark or when the budget is spent.
* When a running request needs a block and none is free, the newest running request is
  preempted. It goes to the front of the waiting queue, keeps its output tokens and is
  recomputed as a prefill of prompt plus output when it is admitted again.

State. One replica is modelled: requests are split evenly over the ``dp`` replicas, and
in an offline batch the modelled replica is the slowest one, with the extra output work
the closed form gives it (see ``_slowest_replica_requests``). Series for the whole
deployment are the replica's times ``dp``.
Requests are fluid mass on a grid of output-length bin x age, where the age is the
number of output tokens generated so far. One scan step covers ``delta`` scheduler
rounds of decoding, and the age grid's buckets are ``delta`` tokens wide. So a step
moves every running request exactly one bucket, the grid adds no numerical diffusion,
and a batch admitted together finishes together. The running requests are ordered by age: the
youngest are the newest admitted and are preempted first, and preempted requests wait
with their age frozen, the oldest readmitted first. Requests that never started wait
behind them in a plain count (their output lengths follow the workload's distribution).

Preemptions have two parts. The net part moves mass from the running grid to the
preempted grid whenever the running set's KV demand exceeds the pool. The churn part
comes from the discreteness the fluid averages out. While requests wait, admission
refills every freed block at once. So in each round the running set's growth (one block
per ``block_size`` decodes) is covered by the blocks the previous round's completions
freed, or else by preempting the newest requests, which come back as soon as blocks
free up again. With completions a Poisson stream of rate lambda per round, each freeing
c blocks, and growth g blocks per round, the expected deficit per round is
E[(g - c N)^+] for N ~ Poisson(lambda); free headroom h blocks absorbs it with
probability 1 - exp(-h lambda / g). The churn costs a recomputation of each victim's
context but leaves the state unchanged.

Step time. A step's rounds carry its prefill in bursts, one per completion or arrival,
and are timed like the closed form's steady rounds (``scheduling.bursty_round``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kvplan.costmodel.hardware import apply_expert_parallel, kv_memory, round_time, select_layout
from kvplan.costmodel.inputs import ConfigBatch, ModelInputs
from kvplan.costmodel.scheduling import bursty_round

# Buckets of the age grid. The bucket width (``delta``, in tokens and in rounds per step)
# is the longest output divided by this, rounded up. With 256 buckets a run of the
# example plans takes a few seconds on two cores, and a typical output spans tens of
# buckets. The 8B example's makespan moved by 0.3 % between 512 and 256 buckets.
AGE_BUCKETS = 256

# Scan steps per compiled call; the driver calls again until every deployment is done.
STEPS_PER_CHUNK = 512

# Upper bound on calls, so that a deployment that cannot finish (for example one whose
# steps take no time) stops the run instead of looping: 256 x 512 steps of at least one
# round each.
MAX_CHUNKS = 256

# Requests still alive below this count end an offline batch: the last one has finished
# (the closed form's drain uses the same threshold).
LAST_REQUEST_THRESHOLD = 0.5

# Series reported over time, in output order, with their units.
SERIES = (
    ("output_tokens_per_s", "output throughput (tokens/s)"),
    ("kv_cache_usage", "KV cache usage (fraction of blocks)"),
    ("running_requests", "running requests"),
    ("waiting_requests", "waiting requests"),
    ("preemptions", "preemptions in the interval"),
    ("cumulative_preemptions", "preemptions since the start"),
    ("hbm_share", "HBM time / step time"),
)


class Grid(NamedTuple):
    """The fixed arrays of one plan's fluid model (shared by all deployments)."""

    outputs: jnp.ndarray  # [J] output length of each bin, tokens
    weights: jnp.ndarray  # [J] probability of each bin
    ages: jnp.ndarray  # [K] age of each bucket (tokens generated), k * delta
    delta: jnp.ndarray  # bucket width in tokens, and rounds per step
    mean_prompt: jnp.ndarray


class Workload(NamedTuple):
    """Arrival mode of one replica, as numbers (batch: requests at t = 0)."""

    initial_requests: jnp.ndarray  # fresh requests waiting at t = 0
    arrival_rate_per_s: jnp.ndarray  # Poisson inflow (rate mode), per replica
    closed_loop: jnp.ndarray  # 1.0 when each completion brings a new request (concurrency)
    horizon_s: jnp.ndarray  # rate and concurrency: the time simulated
    # Requests at the end of the initial queue that stand for the slowest replica's extra
    # work; they are left out of the TTFT statistics.
    extra_requests: jnp.ndarray


class State(NamedTuple):
    """State of one replica's engine between two steps."""

    running: jnp.ndarray  # [J, K] requests decoding, by output bin and age bucket
    preempted: jnp.ndarray  # [J, K] preempted requests waiting for recomputation
    fresh: jnp.ndarray  # requests waiting that have not started
    time_s: jnp.ndarray
    output_tokens: jnp.ndarray
    preemptions: jnp.ndarray
    recomputed_tokens: jnp.ndarray  # prefill tokens spent recomputing preempted requests
    completed: jnp.ndarray
    arrived: jnp.ndarray
    admitted_fresh: jnp.ndarray  # new requests admitted, those in ``extra_requests`` left out
    queue_time_s: jnp.ndarray  # time from arrival to first token, summed over requests
    last_step_s: jnp.ndarray  # duration of the previous step
    decode_time_s: jnp.ndarray  # [J] integral of started, unfinished requests over time (for TPOT)
    kv_integral: jnp.ndarray  # integral of KV usage over time
    hbm_integral: jnp.ndarray  # integral of the HBM share over time
    running_integral: jnp.ndarray
    waiting_integral: jnp.ndarray
    done: jnp.ndarray  # bool


class StepRecord(NamedTuple):
    """Cumulative values at the end of one step, from which the series are resampled."""

    time_s: jnp.ndarray
    output_tokens: jnp.ndarray
    preemptions: jnp.ndarray
    kv_integral: jnp.ndarray
    hbm_integral: jnp.ndarray
    running_integral: jnp.ndarray
    waiting_integral: jnp.ndarray
    kv_usage: jnp.ndarray  # at the end of the step


def _take_prefix(amounts, costs, cost_limit, amount_limit):
    """Return the share of each entry taken, in order, until a cost or amount limit is met.

    ``amounts`` and ``costs`` are [K] arrays in take order; the result is a prefix of
    whole entries and one partial entry.
    """
    amount_before = jnp.cumsum(amounts) - amounts
    cost_before = jnp.cumsum(costs) - costs
    by_cost = (cost_limit - cost_before) / jnp.maximum(costs, 1e-30)
    by_amount = (amount_limit - amount_before) / jnp.maximum(amounts, 1e-30)
    share = jnp.clip(jnp.minimum(by_cost, by_amount), 0.0, 1.0)
    return jnp.where(amounts > 0, share, 0.0)


def _expected_deficit(growth, freed_each, completions):
    """Return E[(growth - freed_each * N)^+] for N ~ Poisson(completions).

    Sums (growth - freed_each n) P(N = n) over n <= m = ceil(growth / freed_each) - 1
    with Poisson distribution functions: growth P(N <= m) - freed_each lambda P(N <= m - 1).
    """
    lam = jnp.maximum(completions, 1e-12)
    freed_each = jnp.maximum(freed_each, 1e-9)
    m = jnp.ceil(growth / freed_each) - 1.0
    cdf_m = jnp.where(m >= 0, jax.scipy.special.gammaincc(jnp.maximum(m + 1.0, 1e-6), lam), 0.0)
    cdf_m_minus_1 = jnp.where(m >= 1, jax.scipy.special.gammaincc(jnp.maximum(m, 1e-6), lam), 0.0)
    return jnp.maximum(growth * cdf_m - freed_each * lam * cdf_m_minus_1, 0.0)


def _step(inputs: ModelInputs, grid: Grid, workload: Workload, layout, memory, tp, pp, max_num_seqs,
          max_num_batched_tokens, state: State):
    """Advance one replica by one step of ``delta`` decode rounds per running request."""
    delta = grid.delta
    block = inputs.block_size
    capacity = jnp.maximum(memory.kv_capacity_tokens, 1.0)
    watermark_tokens = inputs.watermark * capacity
    outputs = grid.outputs[:, None]
    ages = grid.ages[None, :]
    # KV tokens held by a request of each bucket: prompt, output so far, half a block of
    # rounding (the last block of a request is on average half full).
    context = grid.mean_prompt + grid.ages + 0.5 * block  # [K]

    running = state.running
    decoding = jnp.sum(running)
    used_start = jnp.sum(running * context[None, :])

    # Running requests first: decodes share the budget when more run than it holds, and
    # then each round advances only budget / running of them.
    decodes = jnp.minimum(decoding, max_num_batched_tokens)
    rounds = delta * jnp.where(decoding > max_num_batched_tokens, decoding / max_num_batched_tokens, 1.0)

    # Decode: every running request advances one bucket; those whose output ends within
    # it produce only the rest of their output and leave.
    tokens_in_step = jnp.clip(outputs - ages, 0.0, delta)
    finishing = (outputs <= ages + delta) & (outputs > ages)
    finished = running * finishing
    generated = jnp.sum(running * tokens_in_step)
    completions = jnp.sum(finished)
    freed_tokens = jnp.sum(finished * context[None, :]) + jnp.sum(finished * tokens_in_step)
    survivors = running * ~finishing
    advanced = jnp.concatenate([jnp.zeros_like(survivors[:, :1]), survivors[:, :-1]], axis=1)
    used_after_growth = jnp.sum(advanced * context[None, :])

    # Net preemption: when the grown running set does not fit, the youngest go (LIFO).
    # Buckets are taken whole, youngest first, and one in part; within a bucket every
    # output bin loses the same share.
    advanced_mass = jnp.sum(advanced, axis=0)  # [K]
    overflow = jnp.maximum(used_after_growth - capacity, 0.0)
    evicted_share = _take_prefix(advanced_mass, advanced_mass * context, overflow, jnp.inf)
    evicted = advanced * evicted_share[None, :]
    running_after = advanced - evicted
    preempted = state.preempted + evicted
    net_preemptions = jnp.sum(evicted)
    used = used_after_growth - jnp.sum(evicted * context[None, :])

    # Churn: growth that the previous round's completions did not cover, taken from the
    # newest requests and recomputed within the step (see the module docstring).
    waiting_before = state.fresh + jnp.sum(preempted)
    growth_blocks = decodes / block
    completions_per_round = completions / rounds
    blocks_per_completion = freed_tokens / jnp.maximum(completions, 1e-9) / block
    headroom_blocks = jnp.maximum(capacity - used_start, 0.0) / block
    deficit = _expected_deficit(growth_blocks, blocks_per_completion, completions_per_round)
    # Free blocks absorb a deficit that accumulates until the next completion (1 / lambda
    # rounds), or at most until the end of the step.
    accumulated = growth_blocks * jnp.minimum(1.0 / jnp.maximum(completions_per_round, 1e-12), rounds)
    absorbed = jnp.exp(-headroom_blocks / jnp.maximum(accumulated, 1e-9))
    gross_tokens = rounds * deficit * absorbed * block
    churn_tokens = jnp.maximum(gross_tokens - overflow, 0.0) * jnp.minimum(waiting_before, 1.0)
    prefill_capacity = rounds * jnp.maximum(max_num_batched_tokens - decodes, 0.0)
    churn_tokens = jnp.minimum(churn_tokens, prefill_capacity)
    running_after_mass = jnp.sum(running_after, axis=0)
    churn_share = _take_prefix(running_after_mass, running_after_mass * context, churn_tokens, jnp.inf)
    churn_victims = jnp.sum(churn_share * running_after_mass)
    churn_recomputed = jnp.sum(churn_share * running_after_mass * context)

    # Admission takes preempted requests first (oldest first, each recomputing its
    # context), then requests that never started. Blocks above the watermark, free seats
    # under max_num_seqs and the budget left by the decodes limit both.
    free_tokens = jnp.maximum(capacity - watermark_tokens - used, 0.0)
    seats = jnp.maximum(max_num_seqs - jnp.sum(running_after), 0.0)
    prefill_left = jnp.maximum(prefill_capacity - churn_recomputed, 0.0)
    readmit_limit = jnp.minimum(free_tokens, prefill_left)
    preempted_mass = jnp.sum(preempted, axis=0)[::-1]  # oldest first
    readmit_share = _take_prefix(preempted_mass, preempted_mass * context[::-1], readmit_limit, seats)[::-1]
    readmitted = preempted * readmit_share[None, :]
    readmitted_count = jnp.sum(readmitted)
    readmitted_tokens = jnp.sum(readmitted * context[None, :])
    preempted = preempted - readmitted

    # New requests: those waiting at the start and those arriving during the step (at the
    # previous step's pace, or one per completion in a closed loop) queue behind them.
    arrivals = workload.arrival_rate_per_s * state.last_step_s + workload.closed_loop * completions
    queued = state.fresh + arrivals
    fresh_cost = context[0]
    fresh_limit = jnp.minimum(free_tokens - readmitted_tokens, prefill_left - readmitted_tokens)
    nothing_preempted_waits = jnp.sum(preempted) < 1e-6
    admission_limit = jnp.where(
        nothing_preempted_waits,
        jnp.maximum(jnp.minimum(fresh_limit / fresh_cost, seats - readmitted_count), 0.0),
        0.0,
    )
    admitted = jnp.minimum(admission_limit, queued)
    new_running = running_after + readmitted
    new_running = new_running.at[:, 0].add(admitted * grid.weights)
    used_end = used + readmitted_tokens + admitted * fresh_cost

    # Time of the step: ``rounds`` rounds, each with its share of decodes and prefill.
    prefill_tokens = churn_recomputed + readmitted_tokens + admitted * grid.mean_prompt
    prefill_requests = churn_victims + readmitted_count + admitted
    mean_context = used_start / jnp.maximum(decoding, 1e-9)
    prefill_context = jnp.where(
        prefill_tokens > 0,
        0.5 * (churn_recomputed * churn_recomputed / jnp.maximum(churn_victims, 1e-9)
               + readmitted_tokens * readmitted_tokens / jnp.maximum(readmitted_count, 1e-9)
               + admitted * grid.mean_prompt * grid.mean_prompt) / jnp.maximum(prefill_tokens, 1e-9),
        0.0,
    )
    # Admissions follow completions (or, in an open loop, arrivals) in bursts, each
    # prefilled whole, so the rounds are timed as in the closed form (``bursty_round``).
    # With neither, as in the fill of a batch, the prefill runs at an even pace.
    bursts = jnp.maximum(completions, arrivals) / rounds
    step = bursty_round(inputs, layout, tp, pp, max_num_batched_tokens, decodes, bursts, prefill_tokens / rounds,
                        prefill_requests / rounds / jnp.maximum(bursts, 1e-9), decodes * mean_context,
                        prefill_context)
    active = ~state.done
    seconds = jnp.where(active, rounds * step.total, 0.0)
    hbm_share = (step.weight_read + step.kv_read) / jnp.maximum(step.total, 1e-30)

    fresh = queued - admitted

    # Time to first token accrued in the step. Greedy admission takes the queue at the
    # budget's pace of (budget - decodes) / prompt requests per round. The request at
    # queue position x gets its first token at the end of prefill round ceil(x / pace),
    # on average after x / pace + 1/2 rounds. A request arriving during the step and
    # admitted in it waits about half a round, then its prefill round. The rest wait the
    # whole step (or half of it, for those that arrived during it).
    chunk = jnp.maximum(max_num_batched_tokens - decodes, 0.0)
    per_round = jnp.maximum(chunk / grid.mean_prompt, 1e-9)
    from_queue = jnp.minimum(admitted, state.fresh)
    from_arrivals = admitted - from_queue
    counted_waiting = jnp.maximum(state.fresh - workload.extra_requests, 0.0)
    counted_from_queue = jnp.minimum(from_queue, counted_waiting)
    queue_prefill = jnp.minimum(chunk, from_queue * grid.mean_prompt)
    prefill_round_s = round_time(inputs, layout, tp, pp, decodes, queue_prefill, queue_prefill / grid.mean_prompt,
                                 decodes * mean_context, 0.5 * grid.mean_prompt).total
    round_s = seconds / rounds
    waited_s = (prefill_round_s * (counted_from_queue * counted_from_queue / (2.0 * per_round)
                                   + 0.5 * counted_from_queue)
                + round_s * 1.5 * from_arrivals
                + (counted_waiting - counted_from_queue) * seconds
                + (arrivals - from_arrivals) * 0.5 * seconds)

    preemptions = net_preemptions + churn_victims
    # Requests past their first token: running ones (those finishing only for their part
    # of the step) and preempted ones.
    started = (jnp.sum(running * jnp.where(finishing, tokens_in_step / delta, 1.0), axis=1)
               + jnp.sum(state.preempted, axis=1))
    alive = jnp.sum(new_running) + jnp.sum(preempted) + fresh
    waiting_end = jnp.sum(preempted) + fresh
    kv_usage = used_end / capacity
    time_s = state.time_s + seconds
    finished_batch = (workload.arrival_rate_per_s <= 0) & (workload.closed_loop <= 0) & (
        alive < LAST_REQUEST_THRESHOLD)
    done = state.done | finished_batch | (time_s >= workload.horizon_s)

    keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731
    new_state = State(
        running=keep(new_running, state.running),
        preempted=keep(preempted, state.preempted),
        fresh=keep(fresh, state.fresh),
        time_s=time_s,
        output_tokens=state.output_tokens + jnp.where(active, generated, 0.0),
        preemptions=state.preemptions + jnp.where(active, preemptions, 0.0),
        recomputed_tokens=state.recomputed_tokens + jnp.where(active, churn_recomputed + readmitted_tokens, 0.0),
        completed=state.completed + jnp.where(active, completions, 0.0),
        arrived=state.arrived + jnp.where(active, arrivals, 0.0),
        admitted_fresh=state.admitted_fresh + jnp.where(active, counted_from_queue + from_arrivals, 0.0),
        queue_time_s=state.queue_time_s + jnp.where(active, waited_s, 0.0),
        last_step_s=jnp.where(active, seconds, state.last_step_s),
        decode_time_s=state.decode_time_s + seconds * started,
        kv_integral=state.kv_integral + seconds * kv_usage,
        hbm_integral=state.hbm_integral + seconds * hbm_share,
        running_integral=state.running_integral + seconds * jnp.sum(new_running),
        waiting_integral=state.waiting_integral + seconds * waiting_end,
        done=done,
    )
    record = StepRecord(
        time_s=new_state.time_s,
        output_tokens=new_state.output_tokens,
        preemptions=new_state.preemptions,
        kv_integral=new_state.kv_integral,
        hbm_integral=new_state.hbm_integral,
        running_integral=new_state.running_integral,
        waiting_integral=new_state.waiting_integral,
        kv_usage=keep(kv_usage, jnp.sum(state.running * context[None, :]) / capacity),
    )
    return new_state, record


def _replica_parts(inputs: ModelInputs, config: ConfigBatch):
    tp = config.tp.astype(jnp.float32)
    pp = config.pp.astype(jnp.float32)
    max_num_seqs = config.max_num_seqs.astype(jnp.float32)
    max_num_batched_tokens = config.max_num_batched_tokens.astype(jnp.float32)
    layout = apply_expert_parallel(inputs, select_layout(inputs, config.i_tp, config.i_pp),
                                   config.dp.astype(jnp.float32), tp, pp, config.enable_expert_parallel)
    memory = kv_memory(inputs, layout, tp, max_num_seqs, max_num_batched_tokens, config.gpu_memory_utilization)
    return layout, memory, tp, pp, max_num_seqs, max_num_batched_tokens


def _run_chunk_one(inputs: ModelInputs, grid: Grid, workload: Workload, config: ConfigBatch, state: State,
                   steps: int):
    layout, memory, tp, pp, max_num_seqs, max_num_batched_tokens = _replica_parts(inputs, config)

    def body(carry, _):
        return _step(inputs, grid, workload, layout, memory, tp, pp, max_num_seqs, max_num_batched_tokens, carry)

    return jax.lax.scan(body, state, None, length=steps)


@functools.partial(jax.jit, static_argnames=("steps",))
def run_chunk(inputs: ModelInputs, grid: Grid, workloads: Workload, configs: ConfigBatch, states: State,
              steps: int = STEPS_PER_CHUNK):
    """Advance every deployment (one row each) by ``steps`` steps; records are [rows, steps]."""
    return jax.vmap(_run_chunk_one, in_axes=(None, None, 0, 0, 0, None))(
        inputs, grid, workloads, configs, states, steps
    )


def initial_state(grid: Grid, initial_requests: float) -> State:
    shape = (grid.outputs.shape[0], grid.ages.shape[0])
    zero = jnp.zeros((), jnp.float32)
    return State(
        running=jnp.zeros(shape, jnp.float32),
        preempted=jnp.zeros(shape, jnp.float32),
        fresh=jnp.asarray(initial_requests, jnp.float32),
        time_s=zero,
        output_tokens=zero,
        preemptions=zero,
        recomputed_tokens=zero,
        completed=zero,
        arrived=jnp.asarray(initial_requests, jnp.float32),
        admitted_fresh=zero,
        queue_time_s=zero,
        last_step_s=zero,
        decode_time_s=jnp.zeros(shape[:1], jnp.float32),
        kv_integral=zero,
        hbm_integral=zero,
        running_integral=zero,
        waiting_integral=zero,
        done=jnp.asarray(False),
    )


def build_grid(inputs: ModelInputs) -> Grid:
    """Build the output-bin x age grid of a plan from its length distributions."""
    outputs = np.asarray(inputs.output_values, dtype=np.float64)
    weights = np.asarray(inputs.output_probabilities, dtype=np.float64)
    present = weights > 0
    outputs = outputs[present]
    weights = weights[present] / weights[present].sum()
    longest = float(outputs.max())
    delta = max(1.0, math.ceil(longest / AGE_BUCKETS))
    # One bucket past the longest output, so that no request is alive in the last one.
    buckets = int(math.ceil(longest / delta)) + 2
    prompts = np.asarray(inputs.prompt_values, dtype=np.float64)
    prompt_weights = np.asarray(inputs.prompt_probabilities, dtype=np.float64)
    return Grid(
        outputs=jnp.asarray(outputs, jnp.float32),
        weights=jnp.asarray(weights, jnp.float32),
        ages=jnp.asarray(np.arange(buckets) * delta, jnp.float32),
        delta=jnp.asarray(delta, jnp.float32),
        mean_prompt=jnp.asarray(float(np.sum(prompts * prompt_weights) / np.sum(prompt_weights)), jnp.float32),
    )


@dataclasses.dataclass
class ConfigRun:
    """The simulated behaviour of one deployment over time.

    ``records`` are cumulative values at the end of each step (per replica, before
    multiplying by ``dp``); :func:`resample` turns them into series.
    """

    deployment: Any
    feasible: bool
    infeasible_reason: str | None
    closed_form: dict[str, Any]
    finished: bool = True
    summary: dict[str, float | None] = dataclasses.field(default_factory=dict)
    records: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    steps: int = 0


@dataclasses.dataclass
class Simulation:
    """Result of :func:`simulate`: one run per deployment, in the order given."""

    plan: Any
    arrival_mode: str
    runs: list[ConfigRun]
    delta_rounds: float

    def series(self, points: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Resample every feasible run onto ``points`` intervals of a common time axis.

        Returns the interval end times [points] and, per series name, an array
        [runs, points]; infeasible runs are NaN. Rates and levels are averages over each
        interval, so that a saw-tooth shorter than an interval shows as its mean.
        """
        ends = [run.records["time_s"][-1] for run in self.runs if run.feasible and run.records]
        end = max(ends) if ends else 1.0
        edges = np.linspace(0.0, end, points + 1)
        values = {name: np.full((len(self.runs), points), np.nan) for name, _ in SERIES}
        for row, run in enumerate(self.runs):
            if not (run.feasible and run.records):
                continue
            for name, array in resample(run, edges).items():
                values[name][row] = array
        return edges[1:], values


def resample(run: ConfigRun, edges: np.ndarray) -> dict[str, np.ndarray]:
    """Return interval averages (and counts) of one run's records between ``edges``."""
    records = run.records
    dp = run.deployment.dp
    times = np.concatenate([[0.0], records["time_s"]])

    def cumulative(name):
        return np.interp(edges, times, np.concatenate([[0.0], records[name]]))

    widths = np.maximum(np.diff(edges), 1e-30)
    tokens = np.diff(cumulative("output_tokens")) * dp
    preemptions = np.diff(cumulative("preemptions")) * dp
    end = times[-1]
    inside = np.clip((np.minimum(edges[1:], end) - edges[:-1]) / widths, 0.0, 1.0)
    covered = np.maximum(inside * widths, 1e-30)
    # Past the end of a batch that finished nothing runs, so its series read 0 there. A
    # run stopped at its horizon (an arrival rate, clients, or a batch cut short) was not
    # simulated past it, so its series end there, and the interval in which it ends
    # averages over the simulated part only.
    finished = run.summary.get("makespan_s") is not None
    after_end = 0.0 if finished else np.nan
    simulated = inside > 0

    def level(name, scale=1.0):
        averaged = np.diff(cumulative(name)) / covered * scale
        return np.where(simulated, averaged, after_end)

    return {
        "output_tokens_per_s": np.where(simulated, tokens / (widths if finished else covered), after_end),
        "kv_cache_usage": level("kv_integral"),
        "running_requests": level("running_integral", dp),
        "waiting_requests": level("waiting_integral", dp),
        "preemptions": np.where(simulated, preemptions, after_end),
        "cumulative_preemptions": np.where(simulated | finished, cumulative("preemptions")[1:] * dp, np.nan),
        "hbm_share": np.where(simulated, level("hbm_integral"), np.nan),
    }


def _slowest_replica_requests(requests: float, dp: int, grid: Grid) -> float:
    """Return the request count that gives the slowest of ``dp`` replicas its expected work.

    Requests are split evenly, but their output lengths are not. A replica's output
    tokens are a sum of ``requests`` draws. The largest of ``dp`` such sums exceeds the
    mean by the expected maximum of ``dp`` standard normals times the sum's standard
    deviation (the closed form's straggler term). The fluid replica carries that extra
    work as extra requests of the same length distribution.
    """
    from kvplan.costmodel.scheduling import expected_max_of_normals

    outputs = np.asarray(grid.outputs, dtype=np.float64)
    weights = np.asarray(grid.weights, dtype=np.float64)
    mean = float(np.sum(weights * outputs))
    deviation = math.sqrt(max(float(np.sum(weights * outputs**2)) - mean**2, 0.0))
    extra = float(expected_max_of_normals(float(dp))) * math.sqrt(requests) * deviation / mean
    return requests + (extra if dp > 1 else 0.0)


def _workload_per_replica(plan, dp: int, horizon_s: float, grid: Grid) -> tuple[float, ...]:
    workload = plan.workload
    mode = workload.arrival_mode
    if mode == "batch":
        even_share = float(math.ceil(workload.requests / dp))
        requests = _slowest_replica_requests(even_share, dp, grid)
        return requests, 0.0, 0.0, float("inf"), requests - even_share
    if mode == "rate":
        return 0.0, workload.arrival_rate_per_s / dp, 0.0, horizon_s, 0.0
    return float(workload.concurrency) / dp, 0.0, 1.0, horizon_s, 0.0


def _default_horizon_s(evaluation) -> float:
    """Return a simulated time for rate and concurrency long enough to reach steady state.

    Four times the closed form's 99th percentile of end-to-end latency (a request's
    life), or, when the replica cannot keep up and latencies are undefined, 100 times a
    request's life at the closed form's TPOT.
    """
    metrics = evaluation.metrics
    e2e = (metrics.get("e2e_s") or {}).get("p99")
    if e2e:
        return 4.0 * e2e
    tpot = (metrics.get("tpot_s") or {}).get("mean") or metrics.get("step_time_s") or 0.05
    return 100.0 * tpot


def simulate(plan, configs: Sequence[Any], *, horizon_s: float | None = None) -> Simulation:
    """Simulate ``plan`` under each deployment of ``configs`` (Deployment objects or dicts).

    Offline batches run until the last request ends; arrival-rate and concurrency
    workloads run for ``horizon_s`` seconds (default: see :func:`_default_horizon_s`).
    Infeasible deployments are reported with the closed form's reason, not simulated.
    """
    from kvplan.costmodel.evaluate import CostModel
    from kvplan.optimizer.search import _as_deployment
    from kvplan.spec.errors import KvplanError

    deployments = [_as_deployment(plan, config) for config in configs]
    if not deployments:
        raise KvplanError("no configuration to simulate; pass at least one, for example dp=1,tp=8")
    model = CostModel(plan)
    evaluations = model.evaluate(deployments)
    runs = [
        ConfigRun(deployment=evaluation.config, feasible=evaluation.feasible,
                  infeasible_reason=evaluation.infeasible_reason,
                  closed_form=dict(evaluation.metrics))
        for evaluation in evaluations
    ]
    feasible = [index for index, run in enumerate(runs) if run.feasible]
    grid = build_grid(model.inputs)
    simulation = Simulation(plan=plan, arrival_mode=plan.workload.arrival_mode, runs=runs,
                            delta_rounds=float(grid.delta))
    if not feasible:
        return simulation

    chosen = [deployments[index] for index in feasible]
    batch = jax.tree_util.tree_map(jnp.asarray, model.config_batch(chosen))
    per_replica = [
        _workload_per_replica(plan, d.dp, horizon_s if horizon_s is not None
                              else _default_horizon_s(evaluations[index]), grid)
        for d, index in zip(chosen, feasible)
    ]
    workloads = Workload(*(jnp.asarray([row[i] for row in per_replica], jnp.float32)
                           for i in range(len(Workload._fields))))
    states = jax.tree_util.tree_map(
        lambda *leaves: jnp.stack(leaves), *[initial_state(grid, row[0]) for row in per_replica]
    )

    chunks = []
    for _ in range(MAX_CHUNKS):
        states, records = run_chunk(model.inputs, grid, workloads, batch, states)
        chunks.append(jax.tree_util.tree_map(np.asarray, records))
        if bool(np.all(np.asarray(states.done))):
            break
    done = np.asarray(states.done)
    final = jax.tree_util.tree_map(np.asarray, states)
    for row, index in enumerate(feasible):
        run = runs[index]
        merged = {name: np.concatenate([getattr(chunk, name)[row] for chunk in chunks])
                  for name in StepRecord._fields}
        # Steps after the end repeat the final values; drop them.
        times = merged["time_s"]
        last = int(np.searchsorted(times, times[-1], side="left")) + 1
        run.records = {name: array[:last] for name, array in merged.items()}
        run.steps = last
        run.finished = bool(done[row])
        run.summary = _summary(plan, grid, run, jax.tree_util.tree_map(lambda leaf: leaf[row], final))
    return simulation


def _summary(plan, grid: Grid, run: ConfigRun, state) -> dict[str, float | None]:
    dp = run.deployment.dp
    mode = plan.workload.arrival_mode
    records = run.records
    end = float(state.time_s)
    outputs = np.asarray(grid.outputs, dtype=np.float64)
    completed = float(state.completed)
    per_request_decode = np.asarray(state.decode_time_s, dtype=np.float64) / np.maximum(outputs - 1.0, 1.0)
    tpot = float(np.sum(per_request_decode) / completed) if completed > 0 else None
    ttft = float(state.queue_time_s) / float(state.admitted_fresh) if float(state.admitted_fresh) > 0 else None
    if mode == "batch":
        makespan = end if run.finished else None
        # The simulated replica is the slowest one; all replicas together produce the
        # plan's output tokens by its end.
        mean_output = float(np.sum(np.asarray(grid.weights, dtype=np.float64) * outputs))
        throughput = plan.workload.requests * mean_output / end if end > 0 else None
    else:
        makespan = None
        # Steady state: the second half of the simulated time.
        times = records["time_s"]
        half = np.searchsorted(times, 0.5 * end)
        tokens = records["output_tokens"]
        span = end - times[half]
        throughput = float((tokens[-1] - tokens[half]) * dp / span) if span > 0 else None
    kv = records["kv_usage"]
    return {
        "makespan_s": makespan,
        "simulated_s": end,
        "output_tokens_per_s": throughput,
        "ttft_mean_s": ttft,
        "tpot_mean_s": tpot,
        "preemptions": float(state.preemptions) * dp,
        "recomputed_tokens": float(state.recomputed_tokens) * dp,
        "peak_kv_usage": float(np.max(kv)) if kv.size else None,
        "completed_requests": completed * dp,
        "steps": float(run.steps),
    }
