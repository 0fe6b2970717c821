"""Health and readiness of the four services, polled in the background and on demand."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from .clients import cancel_and_wait
from .settings import Settings

log = logging.getLogger("rvchat.app.status")


async def probe(client: httpx.AsyncClient, base_url: str, timeout: float = 2.0) -> dict:
    """One service's /healthz and /readyz, with the round-trip time of each."""
    out: dict = {"url": base_url, "healthy": False, "ready": False}
    for path, key in (("/healthz", "health"), ("/readyz", "ready")):
        t0 = time.perf_counter()
        try:
            resp = await client.get(base_url.rstrip("/") + path, timeout=timeout)
            ms = round((time.perf_counter() - t0) * 1000, 1)
            ok = resp.status_code == 200
            out["healthy" if key == "health" else "ready"] = ok
            out[f"{key}_latency_ms"] = ms
            if not ok:
                try:
                    reason = resp.json().get("reason") or resp.json().get("error", {}).get("message")
                except ValueError:
                    reason = f"HTTP {resp.status_code}"
                out["reason"] = reason or f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            out[f"{key}_latency_ms"] = None
            out["reason"] = f"unreachable: {type(exc).__name__}"
            break
    out["status"] = "ready" if out["ready"] else ("starting" if out["healthy"] else "down")
    return out


class StatusMonitor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.last: dict[str, dict] = {}
        self.checked_at: float | None = None
        self._task: asyncio.Task | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._client = httpx.AsyncClient(headers=self._headers())
        self._task = asyncio.create_task(self._loop())

    def _headers(self) -> dict:
        key = self.settings.services_api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._client:
            await self._client.aclose()

    async def check(self) -> dict[str, dict]:
        client = self._client or httpx.AsyncClient(headers=self._headers())
        urls = self.settings.service_urls()
        results = await asyncio.gather(*(probe(client, url) for url in urls.values()))
        self.last = dict(zip(urls, results))
        self.checked_at = time.time()
        if client is not self._client:
            await client.aclose()
        return self.last

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("status check failed")
            await asyncio.sleep(self.settings.status_interval_s)
