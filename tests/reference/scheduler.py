"""A per-request discrete-event simulator of vLLM v1's scheduler, for testing the cost model.

The closed-form model in ``kvplan.costmodel.scheduling`` turns vLLM v1's scheduling rules
into phase formulas. This simulator follows the same rules one request and one step at a
time, so that the formulas can be checked against it. It is test code: the search never
runs it. The rules, as vLLM v1 states them (``vllm/v1/core/sched/scheduler.py`` and
``vllm/v1/core/kv_cache_manager.py``):

* Each step schedules the running requests first, in admission order. A decode costs one
  token of the ``max_num_batched_tokens`` budget, and a prefill (or the recomputation of
  a preempted request) takes as many tokens as the budget has left: chunked prefill.
* A scheduled request gets KV blocks for the tokens it computes in this step, never for
  future output. When no block is free, the newest running request is preempted. Its
  blocks are freed, its computed tokens are dropped, and it goes to the front of the
  waiting queue. Later it is recomputed as a prefill of its prompt plus the tokens it
  had generated. A request that must preempt itself waits until the next step.
* Waiting requests are admitted, in queue order, only if nothing was preempted in this
  step, while fewer than ``max_num_seqs`` run, the budget lasts and their first chunk's
  blocks fit above the watermark.
* With data parallelism, every replica is an independent engine, and a new request goes
  to the replica with the lowest ``4 x waiting + running``.

A step's duration comes from kvplan's own ``hardware.round_time``, called with that
step's decode and prefill token counts, so any difference from the closed-form model
lies in the scheduling arithmetic.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import math
from collections.abc import Callable

import numpy as np

# Weight of a waiting request against a running one when a data-parallel front end picks
# the least loaded replica (vLLM's DP coordinator ranks replicas by 4 x waiting + running).
WAITING_WEIGHT = 4


@dataclasses.dataclass
class Request:
    """One request and its progress; token counts follow vLLM's ``Request`` fields."""

    index: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    client: int = -1  # closed-loop client that sent it; -1 otherwise
    generated_tokens: int = 0  # output tokens sampled so far
    computed_tokens: int = 0  # tokens whose KV is in the cache
    blocks: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0

    @property
    def tokens(self) -> int:
        """Tokens whose KV the request needs before it can sample its next token."""
        return self.prompt_tokens + self.generated_tokens


@dataclasses.dataclass(frozen=True)
class EngineLimits:
    """The settings of one engine replica that the scheduler obeys."""

    max_num_seqs: int
    max_num_batched_tokens: int
    kv_blocks: int
    block_size: int
    watermark_blocks: int = 0


@dataclasses.dataclass(frozen=True)
class StepWork:
    """What one step computes: the arguments of ``hardware.round_time``."""

    decode_tokens: int
    prefill_tokens: int
    prefill_requests: int
    kv_context_tokens: int  # sum of the decoding requests' contexts
    prefill_context_tokens: float  # mean context a prefill token attends to


# Seconds one step takes for a given piece of work.
StepTimeFunction = Callable[[StepWork], float]


class Replica:
    """One vLLM engine: its running list, waiting queue and KV block pool."""

    def __init__(self, limits: EngineLimits):
        self.limits = limits
        self.running: list[Request] = []
        self.waiting: collections.deque[Request] = collections.deque()
        self.free_blocks = limits.kv_blocks
        self.preemptions = 0
        self.preempted_tokens = 0  # KV tokens dropped by preemptions, recomputed later
        self.steps = 0
        self.peak_used_blocks = 0
        self.step_end_s: float | None = None  # None while idle
        self._scheduled: list[tuple[Request, int]] = []

    @property
    def load(self) -> int:
        return WAITING_WEIGHT * len(self.waiting) + len(self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.limits.block_size)

    def _preempt_newest(self) -> Request:
        victim = self.running.pop()
        self.preempted_tokens += victim.computed_tokens
        self.free_blocks += victim.blocks
        victim.blocks = 0
        victim.computed_tokens = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def _schedule_running(self, budget: int) -> tuple[int, bool]:
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            new_tokens = min(request.tokens - request.computed_tokens, budget)
            needed = self._blocks_for(request.computed_tokens + new_tokens) - request.blocks
            self_preempted = False
            while needed > self.free_blocks:
                victim = self._preempt_newest()
                preempted = True
                if victim is request:
                    self_preempted = True
                    break
            if self_preempted:
                break
            self.free_blocks -= needed
            request.blocks += needed
            self._scheduled.append((request, new_tokens))
            budget -= new_tokens
            index += 1
        return budget, preempted

    def _admit_waiting(self, budget: int) -> None:
        limits = self.limits
        while self.waiting and budget > 0 and len(self.running) < limits.max_num_seqs:
            request = self.waiting[0]
            new_tokens = min(request.tokens - request.computed_tokens, budget)
            needed = self._blocks_for(request.computed_tokens + new_tokens) - request.blocks
            if self.free_blocks - needed < limits.watermark_blocks:
                break
            self.waiting.popleft()
            self.free_blocks -= needed
            request.blocks += needed
            self.running.append(request)
            self._scheduled.append((request, new_tokens))
            budget -= new_tokens

    def schedule(self) -> StepWork:
        """Choose the next step's requests and token counts, allocating their blocks."""
        self._scheduled = []
        budget, preempted = self._schedule_running(self.limits.max_num_batched_tokens)
        if not preempted:
            self._admit_waiting(budget)
        self.peak_used_blocks = max(self.peak_used_blocks, self.limits.kv_blocks - self.free_blocks)

        decodes = prefill_tokens = prefill_requests = kv_context = 0
        prefill_context_sum = 0.0
        for request, new_tokens in self._scheduled:
            if new_tokens == 1 and request.computed_tokens > 0:
                decodes += 1
                kv_context += request.computed_tokens + 1
            else:
                prefill_tokens += new_tokens
                prefill_requests += 1
                # Token j of the chunk attends to computed_tokens + j tokens.
                prefill_context_sum += new_tokens * (request.computed_tokens + (new_tokens + 1) / 2)
        prefill_context = prefill_context_sum / prefill_tokens if prefill_tokens else 0.0
        return StepWork(decodes, prefill_tokens, prefill_requests, kv_context, prefill_context)

    def complete(self, end_s: float) -> list[Request]:
        """Apply the scheduled step that ends at ``end_s``; return the requests it finished."""
        self.steps += 1
        finished = []
        for request, new_tokens in self._scheduled:
            request.computed_tokens += new_tokens
            if request.computed_tokens < request.tokens:
                continue  # a prefill chunk that is not the last one samples nothing
            request.generated_tokens += 1
            if request.first_token_s is None:
                request.first_token_s = end_s
            if request.generated_tokens >= request.output_tokens:
                request.finish_s = end_s
                self.running.remove(request)
                self.free_blocks += request.blocks
                request.blocks = 0
                finished.append(request)
        self._scheduled = []
        return finished


@dataclasses.dataclass(frozen=True)
class Workload:
    """Requests to simulate and how they arrive.

    ``mode`` is "batch" (all at t = 0), "rate" (Poisson arrivals at ``arrival_rate_per_s``)
    or "concurrency" (``concurrency`` clients, each sending its next request when the
    previous one ends, until all requests are sent).
    """

    prompt_tokens: np.ndarray  # [requests]
    output_tokens: np.ndarray  # [requests]
    mode: str
    arrival_rate_per_s: float = 0.0
    concurrency: int = 0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    requests: list[Request]
    makespan_s: float
    preemptions: int
    preempted_tokens: int
    steps: int
    peak_kv_usage: float


def draw_lengths(values, probabilities, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``count`` token lengths from a discrete distribution (support points and weights)."""
    values = np.asarray(values, dtype=np.int64)
    weights = np.asarray(probabilities, dtype=np.float64)
    return rng.choice(values, size=count, p=weights / weights.sum())


def _arrival_times(workload: Workload, count: int) -> np.ndarray:
    if workload.mode == "batch":
        return np.zeros(count)
    if workload.mode == "rate":
        rng = np.random.default_rng([workload.seed, 1])
        return np.cumsum(rng.exponential(1.0 / workload.arrival_rate_per_s, size=count))
    raise ValueError(f"arrival mode {workload.mode!r} has no fixed arrival times")


def simulate(workload: Workload, limits: EngineLimits, replicas: int, step_time: StepTimeFunction,
             max_steps: int = 5_000_000) -> SimulationResult:
    """Run every request of ``workload`` to completion on ``replicas`` engines.

    Replicas run their steps back to back while they have work; a replica that runs out
    of work idles until a request is routed to it. Raises RuntimeError when the run
    exceeds ``max_steps`` steps in total.
    """
    count = len(workload.prompt_tokens)
    requests = [Request(i, int(workload.prompt_tokens[i]), int(workload.output_tokens[i]), 0.0)
                for i in range(count)]
    engines = [Replica(limits) for _ in range(replicas)]

    # Arrivals not yet routed, as a heap of (time, request index).
    arrivals: list[tuple[float, int]] = []
    next_unsent = count
    if workload.mode == "concurrency":
        clients = min(workload.concurrency, count)
        for client in range(clients):
            requests[client].client = client
            arrivals.append((0.0, client))
        next_unsent = clients
    else:
        times = _arrival_times(workload, count)
        arrivals = [(float(times[i]), i) for i in range(count)]
    heapq.heapify(arrivals)

    def route(request: Request, now: float) -> None:
        request.arrival_s = now
        target = min(engines, key=lambda engine: engine.load)
        target.waiting.append(request)

    now = 0.0
    total_steps = 0
    while True:
        next_arrival = arrivals[0][0] if arrivals else math.inf
        busy = [engine.step_end_s for engine in engines if engine.step_end_s is not None]
        next_step_end = min(busy) if busy else math.inf
        if next_arrival == math.inf and next_step_end == math.inf:
            break
        if next_arrival <= next_step_end:
            now = next_arrival
        else:
            now = next_step_end
            for engine in engines:
                if engine.step_end_s != now:
                    continue
                engine.step_end_s = None
                for request in engine.complete(now):
                    if request.client >= 0 and next_unsent < count:
                        requests[next_unsent].client = request.client
                        heapq.heappush(arrivals, (now, next_unsent))
                        next_unsent += 1
        while arrivals and arrivals[0][0] <= now:
            _, index = heapq.heappop(arrivals)
            route(requests[index], now)
        for engine in engines:
            if engine.step_end_s is None and engine.has_work:
                work = engine.schedule()
                engine.step_end_s = now + step_time(work)
                total_steps += 1
        if total_steps > max_steps:
            raise RuntimeError(f"simulation exceeded {max_steps:,} steps; use a smaller case")

    unfinished = [request.index for request in requests if request.finish_s is None]
    if unfinished:
        raise RuntimeError(f"{len(unfinished)} requests never finished, first index {unfinished[0]}")
    return SimulationResult(
        requests=requests,
        makespan_s=max(request.finish_s for request in requests),
        preemptions=sum(engine.preemptions for engine in engines),
        preempted_tokens=sum(engine.preempted_tokens for engine in engines),
        steps=total_steps,
        peak_kv_usage=max(engine.peak_used_blocks for engine in engines) / limits.kv_blocks,
    )


def round_time_function(model, deployment) -> StepTimeFunction:
    """Return a step-time function that calls kvplan's ``hardware.round_time``.

    ``model`` is a ``kvplan.costmodel.evaluate.CostModel`` and ``deployment`` one of its
    deployments; the function is compiled once, with the plan's inputs and the
    deployment's layout as constants.
    """
    import jax
    import jax.numpy as jnp

    from kvplan.costmodel.hardware import round_time, select_layout

    model.config_batch([deployment])  # makes sure the model's tables cover tp and pp
    i_tp = model._tp_values.index(deployment.tp)
    i_pp = model._pp_values.index(deployment.pp)
    inputs = model.inputs
    layout = select_layout(inputs, i_tp, i_pp)
    tp = jnp.float32(deployment.tp)
    pp = jnp.float32(deployment.pp)

    @jax.jit
    def step_seconds(decodes, prefill_tokens, prefill_requests, kv_context, prefill_context):
        return round_time(inputs, layout, tp, pp, decodes, prefill_tokens, prefill_requests,
                          kv_context, prefill_context).total

    cache: dict[StepWork, float] = {}

    def step_time(work: StepWork) -> float:
        seconds = cache.get(work)
        if seconds is None:
            seconds = float(step_seconds(
                np.float32(work.decode_tokens), np.float32(work.prefill_tokens),
                np.float32(work.prefill_requests), np.float32(work.kv_context_tokens),
                np.float32(work.prefill_context_tokens),
            ))
            cache[work] = seconds
        return seconds

    return step_time
