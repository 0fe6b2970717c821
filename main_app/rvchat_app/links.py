"""Service links: one session's connections to the four services, and what still works without one.

Owns: each :class:`Link` (a service stream reconnected with backoff whenever it drops, with
``idle`` for request/terminal-event pairing; moved at once to another replica when nothing is lost
by it) and :func:`degraded_modes`, the single place that
turns "which services are up" into the modes the page offers (voice in, voice out, chat) and the
notice it shows. ``/api/status`` uses the same function over the polled readiness.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .clients import Closed, ServiceClosed, ServiceStream, cancel_and_wait

log = logging.getLogger("rvchat.app.links")

SERVICES = ("vad", "stt", "llm", "tts")
LABELS = {"vad": "voice activity detection (VAD)", "stt": "speech recognition (STT)",
          "llm": "language model (LLM)", "tts": "speech synthesis (TTS)"}

StreamFactory = Callable[[], ServiceStream]
MOVE_TIMEOUT_S = 5.0  # a replica that takes longer to accept a moved session is not one to move to
NOTE_S = 6.0  # how long the page's banner says a service moved
JOURNAL_MAX_BYTES = 120 * 32000  # 2 min of 16 kHz PCM16: longer utterances are not replayed
# A link's event callback: the service's typed events, and a Closed when the connection drops.
OnEvent = Callable[[str, Any], Awaitable[None]]


def degraded_modes(up: dict[str, bool], starting: frozenset[str] = frozenset()) -> dict:
    """The modes that work with these services up, and a notice naming what is down.

    ``starting`` are services still making their first connection: not reported as down.
    """
    modes = {
        "voice_in": up.get("vad", False) and up.get("stt", False) and up.get("llm", False),
        "voice_out": up.get("tts", False),
        "chat": up.get("llm", False),
    }
    down = [LABELS[n] for n, ok in up.items() if not ok and n not in starting]
    if not down:
        notice = ""
    elif not modes["chat"] and LABELS["llm"] in down:
        notice = f"The {LABELS['llm']} is unavailable: no replies can be made until it is back."
    elif not modes["voice_in"] and not modes["voice_out"]:
        notice = f"{', '.join(down)} unavailable: typed chat works, with text replies only."
    elif not modes["voice_in"]:
        notice = f"{', '.join(down)} unavailable: type your messages (replies are still spoken)."
    else:
        notice = f"{', '.join(down)} unavailable: replies come as text only."
    return {"modes": modes, "notice": notice}


class Link:
    """A session's connection to one service; reconnected with backoff whenever it drops."""

    def __init__(self, name: str, factory: StreamFactory, on_event: OnEvent,
                 on_status: Callable[[Link], Awaitable[None]]) -> None:
        self.name = name
        self.factory = factory
        self.on_event = on_event
        self.on_status = on_status
        self.stream: ServiceStream | None = None
        self.up = False
        self.reason = "connecting"
        self.ready: dict = {}
        # Busy from a request (generate / text) until its terminal event (done / cancelled / error).
        self.idle = asyncio.Event()
        self.idle.set()
        self.up_event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        # Calls the service has not answered yet (stream.journaled), sent again to a new connection.
        self._journal: list[tuple[str, tuple, dict]] = []
        self.journaled: tuple[str, ...] = ()  # the stream's journaled methods, known once it connected
        self._journal_bytes = 0
        self._lossy = False  # the journal overflowed: what is in flight cannot be replayed whole
        self._moving: asyncio.Future | None = None
        self.note = ""  # "moved to another replica", shown on the page for a few seconds

    @property
    def starting(self) -> bool:
        """Still making its first connection (not yet reported as down)."""
        return not self.up and self.reason == "connecting"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.name}")

    async def _run(self) -> None:
        delay = 0.25
        moved: ServiceStream | None = None
        while not self._closing:
            stream, moved = moved or self.factory(), None
            if self.stream is not stream:
                try:
                    self.ready = await stream.connect()
                except ServiceClosed as exc:
                    await self._set_down(exc.reason)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                except asyncio.CancelledError:
                    await stream.close()
                    raise
                except Exception as exc:  # a service that breaks protocol is a down service, not a crash
                    log.exception("%s: connect failed", self.name)
                    await self._set_down(f"connect failed: {exc}")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.25
                self.journaled = getattr(stream, "journaled", ())  # test fakes replay nothing
                self.stream, self.up, self.reason = stream, True, ""
                self.idle.set()
                self.up_event.set()
                log.info("%s connected", self.name)
                await self.on_status(self)
            reason = "connection closed"
            try:
                async for event in stream.events():
                    if self._journal and stream.settles(event):
                        self._settle(stream.journaled[-1])
                    await self.on_event(self.name, event)
            except ServiceClosed as exc:
                reason = exc.reason
            except asyncio.CancelledError:
                await stream.close()
                raise
            except Exception as exc:
                log.exception("%s: event handling failed", self.name)
                reason = f"protocol error: {exc}"
            self.stream = None
            await stream.close()
            if (moved := await self._move(stream, reason)) is not None:
                continue
            self._journal.clear()
            self._journal_bytes, self._lossy = 0, False
            await self._set_down(reason)
            self.idle.set()
            await self.on_event(self.name, Closed(reason))

    async def _move(self, lost: ServiceStream, reason: str) -> ServiceStream | None:
        """Reconnect at once (another replica, if the service has several) without going down, when
        nothing is lost by it: no request in flight, or all of it journaled and sent again."""
        if self._closing or self._lossy or not (self.idle.is_set() or self.journaled):
            return None
        self._moving = asyncio.get_running_loop().create_future()
        stream = self.factory()
        try:
            self.ready = await asyncio.wait_for(stream.connect(), MOVE_TIMEOUT_S)
            sent = 0
            while sent < len(self._journal):  # calls made meanwhile are appended: send them too
                method, args, kwargs = self._journal[sent]
                await getattr(stream, method)(*args, **kwargs)
                sent += 1
        except (ServiceClosed, TimeoutError, OSError) as exc:
            log.warning("%s: lost (%s) and could not move: %s", self.name, reason, exc)
            await stream.close()
            return None
        finally:
            self._moving.set_result(None)
            self._moving = None
        self.stream = stream
        self.note = f"moved to another server ({reason}); nothing was lost"
        log.info("%s: lost %s (%s); moved to %s, %d unanswered call(s) sent again", self.name,
                 getattr(lost, "base_url", "?"), reason, getattr(stream, "base_url", "?"), sent)
        await self.on_status(self)
        asyncio.get_running_loop().call_later(NOTE_S, self._clear_note, self.note)
        return stream

    def _clear_note(self, note: str) -> None:
        if self.note == note and not self._closing:
            self.note = ""
            asyncio.ensure_future(self.on_status(self))

    def _record(self, method: str, args: tuple, kwargs: dict) -> None:
        if self._lossy:
            return
        self._journal.append((method, args, kwargs))
        self._journal_bytes += _pcm_bytes(args)
        if self._journal_bytes > JOURNAL_MAX_BYTES:
            self._journal.clear()
            self._journal_bytes, self._lossy = 0, True

    def _settle(self, request: str) -> None:
        """The service answered the oldest ``request`` (STT: a final for an ``end``): forget it and what
        led to it."""
        for i, (method, args, _) in enumerate(self._journal):
            if method == request:
                del self._journal[:i + 1]
                self._journal_bytes = sum(_pcm_bytes(args) for _, args, _ in self._journal)
                break
        if not self._journal:
            self._lossy = False

    async def _set_down(self, reason: str) -> None:
        changed = self.up or self.reason != reason
        self.up, self.reason = False, reason
        self.up_event.clear()
        if changed:
            log.warning("%s down: %s", self.name, reason)
            await self.on_status(self)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> bool:
        """Call a stream method; False (and the link goes down) when the service is unreachable."""
        stream = self.stream
        journaled = method in self.journaled
        if journaled:
            self._record(method, args, kwargs)
        elif self._moving is not None:
            await asyncio.shield(self._moving)
            stream = self.stream
        # A journaled call on a lost connection is not lost: the next connection gets it (or the link
        # goes down, and its Closed tells whoever waits for the answer).
        kept = journaled and not self._lossy
        if stream is None or not self.up:
            return kept and self.up
        try:
            await getattr(stream, method)(*args, **kwargs)
            return True
        except ServiceClosed:
            await stream.close()  # ends the reader loop, which reconnects
            return kept

    async def wait_up(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.up_event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def restart(self, timeout: float = 5.0) -> bool:
        """Drop the connection (e.g. a request that never ended) and wait for a fresh one.

        What was in flight is given up on purpose, so the link moves to a new connection without
        going down: no ``Closed`` reaches the reply that asked for the restart (it has sent nothing
        on this link yet), and the page sees no service outage. Before, a TTS busy for 2 s with 8
        conversations on 2 cores was restarted as a loss, and the next reply went out as text only
        with a tts_failed error (bench/concurrency.py, 2 of 32 turns).
        """
        stream = self.stream
        if stream is None:
            return await self.wait_up(timeout)
        self.idle.set()  # nothing in flight any more: the reader moves on (_move) instead of going down
        await stream.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.stream is stream or self.stream is None or not self.up:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(self._task)
        if self.stream is not None:
            await self.stream.close()


def _pcm_bytes(args: tuple) -> int:
    return sum(len(a) for a in args if isinstance(a, bytes))


class Links:
    """The session's four links, by name, and the view of them the page shows."""

    def __init__(self, factories: dict[str, StreamFactory], on_event: OnEvent,
                 on_status: Callable[[Link], Awaitable[None]]) -> None:
        self.by_name = {name: Link(name, factories[name], on_event, on_status)
                        for name in SERVICES if name in factories}

    def get(self, name: str) -> Link | None:
        return self.by_name.get(name)

    def __getitem__(self, name: str) -> Link:
        return self.by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def is_up(self, name: str) -> bool:
        link = self.by_name.get(name)
        return link is not None and link.up

    def start(self) -> None:
        for link in self.by_name.values():
            link.start()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.by_name.values()), return_exceptions=True)

    def view(self) -> dict:
        services = {name: {"up": link.up, "reason": link.reason, "label": LABELS[name]}
                    for name, link in self.by_name.items()}
        up = {name: link.up for name, link in self.by_name.items()}
        starting = frozenset(n for n, link in self.by_name.items() if link.starting)
        view = degraded_modes(up, starting)
        moved = [f"The {LABELS[n]} {link.note}." for n, link in self.by_name.items() if link.note and link.up]
        if moved and not view["notice"]:
            view["notice"] = " ".join(moved)
        return {"services": services, **view}
