"""Graceful shutdown (the drain on SIGTERM) and the model queue's metrics, in the shared skeleton."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from rvchat_common import ServiceSettings, build_app
from rvchat_common.inference import InferenceQueue
from rvchat_common.streaming import DRAIN_QUIET_S, Drain
from rvchat_common.testing import REPO, free_port


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_queue_depth_running_and_waits_are_on_metrics():
    app = build_app(service="demo", settings=ServiceSettings())
    app.state.queue = queue = InferenceQueue(max_queue=1)
    with TestClient(app) as client:
        text = client.get("/metrics").text
        assert metric(text, "inference_queue_depth") == 0 and metric(text, "inference_queue_limit") == 1
        assert metric(text, "inference_queue_wait_seconds_count") == 0

    release = asyncio.Event()

    async def job() -> None:
        async with queue.slot():
            await release.wait()

    first = asyncio.create_task(job())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(job())  # waits behind the first
    await asyncio.sleep(0.05)
    assert queue.busy and queue.waiting == 1
    with pytest.raises(Exception) as full:
        queue.slot()  # a third is refused: the queue holds one
    assert getattr(full.value, "status", None) == 503
    text = "".join(m.name + "\n" for m in queue.collect())
    assert "inference_queue_depth" in text
    samples = {s.name: s.value for m in queue.collect() for s in m.samples}
    assert samples["inference_queue_depth"] == 1 and samples["inference_queue_running"] == 1
    assert samples["inference_queue_rejected_total"] == 1
    release.set()
    await asyncio.gather(first, second)
    samples = {s.name: s.value for m in queue.collect() for s in m.samples}
    assert samples["inference_queue_wait_seconds_count"] == 2
    assert samples["inference_queue_wait_seconds_sum"] >= 0.04
    assert not queue.busy


async def test_drain_waits_for_quiet_and_gives_up_at_its_timeout():
    drain = Drain()
    work = {"left": 3}

    def check() -> str | None:
        return f"{work['left']} left" if work["left"] else None

    drain.add_check(check)

    async def finish() -> None:
        while work["left"]:
            await asyncio.sleep(0.05)
            work["left"] -= 1

    task = asyncio.create_task(finish())
    t0 = time.monotonic()
    assert await drain.wait_idle(timeout=5, quiet=0.2, poll=0.01)
    assert 0.3 <= time.monotonic() - t0 < 2  # the work (~0.15 s) plus the quiet period
    await task
    work["left"] = 1
    t0 = time.monotonic()
    assert not await drain.wait_idle(timeout=0.3, quiet=0.1, poll=0.01)
    assert time.monotonic() - t0 < 1


# A service as its __main__ would run it: one slow endpoint, served by rvchat_common.streaming.serve.
SLOW_SERVICE = textwrap.dedent("""
    import asyncio
    from rvchat_common import ServiceSettings, build_app
    from rvchat_common.streaming import serve

    def create_app(settings):
        app = build_app(service="slow", settings=settings)

        @app.get("/slow")
        async def slow(seconds: float = 2.0) -> dict:
            await asyncio.sleep(seconds)
            return {"slept": seconds}
        return app

    serve(create_app, ServiceSettings(host="127.0.0.1", port={port}, log_json=False))
""")


def start_slow_service(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVICE.replace("{port}", str(port))], cwd=REPO,
                            env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stdout.read().decode(errors="replace"))


def test_sigterm_lets_a_request_in_flight_finish_then_exits():
    port = free_port()
    proc = start_slow_service(port)
    try:
        async def scenario() -> tuple[httpx.Response, int]:
            async with httpx.AsyncClient(timeout=20) as client:
                pending = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/slow?seconds=2"))
                await asyncio.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                ready = (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code  # still serving
                return await pending, ready

        response, ready = asyncio.run(scenario())
        assert response.status_code == 200 and response.json() == {"slept": 2.0}
        assert ready == 503  # draining: the load balancer stops sending new work
        proc.wait(15)  # and then it exits by itself
        out = proc.stdout.read().decode(errors="replace")
        assert "draining" in out and "drained in" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_sigterm_stops_at_once():
    port = free_port()
    proc = start_slow_service(port)
    try:
        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=20) as client:
                pending = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/slow?seconds=30"))
                await asyncio.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                await asyncio.to_thread(proc.wait, 15)
                assert time.monotonic() - t0 < 10  # uvicorn's own 5 s grace, not the 30 s request
                pending.cancel()

        asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_with_no_client_connected_the_drain_does_not_wait_for_quiet():
    """Quiet is waited for because a connected client's work comes in bursts (a reply's next sentence); a
    process with nothing busy and no client connected has no burst to wait for, and stops at once."""
    drain = Drain()
    open_connections = {"n": 1}
    drain.count_connections(lambda: open_connections["n"])
    drain.count_connections(lambda: 0)  # a second server (Wyoming) with none
    t0 = time.monotonic()
    assert await drain.wait_idle(timeout=5, quiet=0.5, poll=0.01)
    assert time.monotonic() - t0 >= 0.5  # a client is connected: its next job may come
    open_connections["n"] = 0
    t0 = time.monotonic()
    assert await drain.wait_idle(timeout=5, quiet=0.5, poll=0.01)
    assert time.monotonic() - t0 < 0.5


def test_sigterm_with_no_client_connected_exits_without_the_quiet_wait():
    port = free_port()
    proc = start_slow_service(port)  # its health poll's connection is closed
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        out = proc.stdout.read().decode(errors="replace")
        drained = re.search(r"drained in ([0-9.]+) s", out)
        assert drained and float(drained.group(1)) < DRAIN_QUIET_S, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
