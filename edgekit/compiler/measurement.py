"""Measuring candidates: sample inputs, numerical agreement with the source model's outputs, and latency."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from edgekit.manifest import Accuracy, Latency, TensorSpec
from edgekit.runtime.inputs import random_feed
from edgekit.runtime.sequences import is_sequence

__all__ = ["agreement", "fewer_threads", "host_description", "interleaved_latency", "sample_inputs", "settle"]

Predict = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def sample_inputs(specs: Sequence[TensorSpec], count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Deterministic random inputs: standard normal for floats, small non-negative ints otherwise.

    Knows only the specs; :func:`edgekit.compiler.synthetic.synthesize` also reads the graph for each input's role.
    """
    rng = np.random.default_rng(seed)
    return [random_feed(specs, rng) for _ in range(count)]


def agreement(
    outputs: Sequence[Sequence[np.ndarray]],
    expected: Sequence[Sequence[np.ndarray]],
    reference_name: str,
) -> Accuracy:
    """Max |candidate - reference| over float outputs, and top-1 agreement; ``outputs`` holds the candidate's
    outputs per sample, ``expected`` the reference's.

    Top-1 is the arg-max over the last axis of 2-D float outputs with more than one
    column (class scores), or exact equality of integer outputs (class labels). It is
    ``None`` when the model has neither.
    """
    max_err = 0.0
    agree = 0
    total = 0
    for got, want in zip(outputs, expected, strict=True):
        if len(got) != len(want):
            raise ValueError(f"candidate returned {len(got)} outputs, the source model {len(want)}")
        pairs: list[tuple[object, object]] = list(zip(got, want, strict=True))
        while pairs:
            g, w = pairs.pop(0)
            if is_sequence(w) or is_sequence(g):  # a sequence output: element by element, of the same length
                if not (is_sequence(w) and is_sequence(g)) or len(g) != len(w):  # type: ignore[arg-type]
                    raise ValueError(f"candidate gives {_what(g)} where the source model gives {_what(w)}")
                pairs.extend(zip(g, w, strict=True))  # type: ignore[call-overload]
                continue
            g = np.asarray(g)
            w = np.asarray(w)
            if g.size != w.size:
                raise ValueError(f"output of shape {g.shape} where the source model gives {w.shape}")
            g = g.reshape(w.shape)
            if w.dtype.kind == "f":
                if g.size:
                    flat_g, flat_w = g.reshape(-1), w.reshape(-1)  # 1-d: a 0-d output (a scalar) too
                    diff = np.abs(flat_g.astype(np.float64) - flat_w.astype(np.float64))
                    diff[np.isnan(flat_g) & np.isnan(flat_w)] = 0.0  # NaN where the source gives NaN agrees
                    diff[np.isinf(flat_g) & (flat_g == flat_w)] = 0.0
                    max_err = max(max_err, float(np.max(diff)) if not np.isnan(diff).any() else float("inf"))
                if w.ndim == 2 and w.shape[1] > 1:
                    agree += int(np.sum(np.argmax(g, axis=1) == np.argmax(w, axis=1)))
                    total += w.shape[0]
            else:
                agree += int(np.sum(g.reshape(-1) == w.reshape(-1)))
                total += w.size
    return Accuracy(
        max_abs_error=max_err,
        top1_agreement=(agree / total) if total else None,
        samples=len(expected),
        reference=reference_name,
    )


def _what(value: object) -> str:
    return f"a sequence of {len(value)} element(s)" if isinstance(value, (list, tuple)) else "a tensor"


def interleaved_latency(
    predicts: Sequence[Predict], feed: dict[str, np.ndarray], warmup: int, repeat: int, rounds: int = 5
) -> list[Latency]:
    """Latency of several predictors measured in turns, so that machine noise hits them alike.

    Each predictor gets ``warmup`` untimed runs, then ``rounds`` rounds in which every
    predictor (in rotating order) runs a block of about ``repeat / rounds`` timed calls. Each latency keeps the
    median of each of its blocks (``rounds_ms``): the select phase compares candidates round by round.
    """
    for predict in predicts:
        for _ in range(warmup):
            predict(feed)
    rounds = max(1, min(rounds, repeat))
    block = [repeat // rounds + (1 if r < repeat % rounds else 0) for r in range(rounds)]
    times: list[list[float]] = [[] for _ in predicts]
    per_round: list[list[float]] = [[] for _ in predicts]  # each round's median: rounds pair the candidates up
    order = list(range(len(predicts)))
    waiting = True
    for r in range(rounds):
        for i in order:
            predict = predicts[i]
            if waiting:  # the predictor before may have left threads spinning, which this one would pay for
                waiting = settle() < _SETTLE_LIMIT_S  # a thread busy for good (not ours to stop): wait no more
            predict(feed)  # one untimed call: the cache belongs to this predictor again
            block_ms = []
            for _ in range(block[r]):
                t0 = time.perf_counter()
                predict(feed)
                block_ms.append((time.perf_counter() - t0) * 1e3)
            times[i].extend(block_ms)
            per_round[i].append(float(np.median(block_ms)))
        order = order[1:] + order[:1]
    out = []
    for t, r_ms in zip(times, per_round, strict=True):
        arr = np.asarray(t)
        median, p90 = float(np.median(arr)), float(np.percentile(arr, 90))
        out.append(Latency(median_ms=median, p90_ms=p90, runs=len(t), rounds_ms=r_ms if rounds > 1 else None))
    return out


_SETTLE_LIMIT_S = 0.5


def settle(step_s: float = 0.004, limit_s: float = _SETTLE_LIMIT_S) -> float:
    """Wait until this process's other threads are idle, at most ``limit_s``; the seconds waited.

    ONNX Runtime's intra-op workers spin for tens of milliseconds after a run before they sleep (measured here:
    0.13 s of CPU among four 2-thread sessions in the second after their runs). Timed in turns, the next
    candidate's block ran beside the spinning workers of the ones before it: an identical MobileNetV2 session read
    1.6 and 4.3 ms in one compile, and every candidate ran 2-5x its time alone. A device runs one model: its own
    workers spin between its calls, no other session's do.

    Idle: no other thread of the process running or runnable (``/proc/self/task/*/stat``: a spinning thread stays
    runnable while the machine's load keeps it off a core) at two looks ``step_s`` apart; where /proc can't say, its
    CPU time growing by less than a tenth of the wall time over ``step_s``."""
    start = time.perf_counter()
    quiet_looks = 0
    while quiet_looks < 2:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(step_s)
        running = _others_running()
        if running is None:
            running = time.process_time() - cpu >= 0.1 * (time.perf_counter() - wall)
        quiet_looks = 0 if running else quiet_looks + 1
        if time.perf_counter() - start >= limit_s:
            break
    return time.perf_counter() - start


def _others_running() -> bool | None:
    """Whether a thread of this process other than the caller is running or runnable; None without /proc."""
    me = str(threading.get_native_id())
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        if task == me:
            continue
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # it ended
        state = stat.rindex(b")") + 2  # after "pid (comm) ": the comm may hold spaces and parentheses
        if stat[state : state + 1] == b"R":
            return True
    return False


def host_description() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()} {cpu}".strip()


def fewer_threads(
    predicts: Mapping[int, Predict], feed: dict[str, np.ndarray], budget_s: float = 0.3, rounds: int = 5
) -> tuple[int, dict[str, object]]:
    """The thread count of ``predicts`` (thread count → the same model run with that many ONNX Runtime intra-op
    threads; the first is the profile's, the default) that runs ``feed`` fastest here, and what was measured.

    A smaller count wins only clearly: a median more than 15 % lower and faster in all but one of ``rounds``
    interleaved rounds, in two timings — else the first stays. Timed for about ``budget_s`` seconds a timing (at
    least 10 runs each per round)."""
    counts = list(predicts)
    default = counts[0]
    for predict in predicts.values():  # a first call allocates; then one timed call sizes the blocks
        predict(feed)
    t0 = time.perf_counter()
    predicts[default](feed)
    once = max(time.perf_counter() - t0, 1e-6)
    repeat = max(10 * rounds, min(500 * rounds, int(budget_s / (once * len(counts)))))

    def timed() -> dict[int, Latency]:
        return dict(zip(counts, interleaved_latency(list(predicts.values()), feed, 3, repeat, rounds), strict=True))

    latencies = timed()
    chosen = _clearly_fewer(latencies, default, rounds)
    measured: dict[str, object] = {
        "medianMs": {str(c): round(lat.median_ms, 4) for c, lat in latencies.items()},
        "chosen": chosen,
        "runs": latencies[default].runs,
        "host": host_description(),
    }
    if chosen != default:
        # Fewer threads win when the other cores are busy, and a busy spell (another process, the kernel writing
        # back the files just written) can outlast a whole timing: MobileNetV2 read 2.81 ms at 2 threads against
        # 2.57 at 1 in one compile, 1.40 against 2.47 in the next. So a win for fewer threads is timed again.
        again = timed()
        measured["againMs"] = {str(c): round(lat.median_ms, 4) for c, lat in again.items()}
        if _clearly_fewer(again, default, rounds) != chosen:
            chosen = default
            measured["chosen"] = chosen
            measured["unconfirmed"] = "fewer threads won the first timing, not the second: the profile's count stays"
    return chosen, measured


_FEWER_BY = 0.15
"""How much faster fewer threads must run to win: with the second vCPU gone for a while (the host's spells), 2 threads
ran MobileNetV2 in 2.81 ms against 2.57 at 1 (9 % slower) where they run it in 1.40 against 2.47; a small model that
really runs faster on one thread wins by 30 % and more (the digits CNN: 0.040 against 0.058 ms)."""


def _clearly_fewer(latencies: Mapping[int, Latency], default: int, rounds: int) -> int:
    """The smallest thread count that ran clearly faster than ``default`` (a median more than 15 % lower, faster in
    all rounds but one), else ``default``."""
    base = latencies[default]
    for count in sorted(latencies):
        lat = latencies[count]
        if count >= default or lat.median_ms >= (1 - _FEWER_BY) * base.median_ms:
            continue
        wins = sum(a < b for a, b in zip(lat.rounds_ms or [], base.rounds_ms or [], strict=True))
        if wins >= rounds - 1:
            return count
    return default
