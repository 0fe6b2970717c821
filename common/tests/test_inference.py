"""The model queue: priorities, several workers, cancellation while waiting."""

from __future__ import annotations

import asyncio
import threading
import time

from rvchat_common.inference import InferenceQueue


async def test_waiting_jobs_go_by_priority_then_arrival():
    queue = InferenceQueue(max_queue=8)
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with queue.slot():
            await release.wait()

    async def job(name: str, priority: int) -> None:
        async with queue.slot(priority):
            order.append(name)

    first = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    # A partial, then another stream's speculative decode, then a final: the final goes first.
    tasks = [asyncio.create_task(job(n, p)) for n, p in
             [("partial", 2), ("early", 1), ("final", 0), ("early2", 1), ("final2", 0)]]
    await asyncio.sleep(0.01)
    assert queue.waiting == 5 and queue.waiting_before(0) == 2 and queue.waiting_before(1) == 4
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["final", "final2", "early", "early2", "partial"]
    assert not queue.busy


async def test_several_workers_run_at_once_and_no_more():
    queue = InferenceQueue(max_queue=8, workers=2)
    lock = threading.Lock()
    running, peak = 0, 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    await asyncio.gather(*(queue.run(work) for _ in range(5)))
    assert peak == 2 and queue.running == 0 and not queue.busy


async def test_a_job_cancelled_while_waiting_leaves_no_trace():
    queue = InferenceQueue(max_queue=8)
    release = asyncio.Event()
    order: list[int] = []

    async def hold() -> None:
        async with queue.slot():
            await release.wait()

    async def job(i: int) -> None:
        async with queue.slot():
            order.append(i)

    first = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    gone, kept = asyncio.create_task(job(1)), asyncio.create_task(job(2))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    assert queue.waiting == 1
    release.set()
    await asyncio.gather(first, kept)
    assert order == [2] and queue.running == 0 and not queue.busy


async def test_a_job_cancelled_as_it_is_granted_passes_the_worker_on():
    queue = InferenceQueue(max_queue=8)
    order: list[int] = []
    release = asyncio.Event()
    tasks: list[asyncio.Task] = []

    async def hold() -> None:
        async with queue.slot():
            await release.wait()
        tasks[0].cancel()  # the worker has just been handed to job 1, which has not resumed yet

    async def job(i: int) -> None:
        async with queue.slot():
            order.append(i)

    first = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    tasks += [asyncio.create_task(job(1)), asyncio.create_task(job(2))]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first, *tasks, return_exceptions=True)
    assert order == [2] and queue.running == 0 and not queue.busy


def test_compute_gate_lets_a_more_urgent_job_in_between_two_steps():
    from rvchat_common.inference import ComputeGate

    gate = ComputeGate(permits=1)
    steps: list[str] = []

    def urgent_job() -> None:
        assert gate.acquire((0, 1))
        steps.extend(["urgent"] * 3)
        gate.release()

    urgent = threading.Thread(target=urgent_job)

    def long_job() -> None:
        assert gate.acquire((1, 0))
        for i in range(20):
            steps.append("long")
            if i == 2:  # the urgent job arrives while this step computes
                urgent.start()
                while gate.waiting() == 0:
                    time.sleep(0.001)
            assert gate.step((1, 0))
        gate.release()

    long = threading.Thread(target=long_job)
    long.start()
    long.join(10)
    urgent.join(10)
    # The long job let the urgent one in after the step during which it arrived, then went on.
    assert steps[:6] == ["long"] * 3 + ["urgent"] * 3 and steps.count("long") == 20
    assert gate.yields == 1 and gate.waiting() == 0


def test_compute_gate_wait_ends_when_the_job_is_stopped():
    from rvchat_common.inference import ComputeGate

    gate = ComputeGate(permits=1)
    assert gate.acquire((0, 0))
    stop = threading.Event()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(gate.acquire((0, 1), stop)))
    waiter.start()
    time.sleep(0.05)
    stop.set()
    waiter.join(5)
    assert result == [False] and gate.waiting() == 0
    gate.release()
    assert gate.acquire((1, 2))  # free again, at once
