"""WS /ws: streamed generation with cancel, tool calls, and end-of-utterance questions (docs/protocols.md, LLM).

Framing, JSON, limits and error events are the shared receive loop's (rvchat_common.ws). A
``generate`` runs in its own task, so a ``cancel`` or a new ``generate`` is read at once: a new
``generate`` cancels the running one first (it gets its ``cancelled``), so a barge-in needs only
the new turn. Every event of a generation carries its id.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Callable

from fastapi import APIRouter, WebSocket

from rvchat_common.app import is_ready
from rvchat_common.errors import APIError
from rvchat_common.protocol import ErrorEvent, ProtocolError, llm
from rvchat_common.ws import MAX_FRAME_BYTES, EventSocket, Limits

from .engine import ChatEngine, Request, generation_error
from .providers.base import Delta, ToolCallDelta
from .schemas import to_request
from .tools import ToolCalls

router = APIRouter()
log = logging.getLogger("rvchat.llm.ws")

# A conversation's history can be long: text frames up to the server's own frame limit.
LIMITS = Limits(max_text_bytes=MAX_FRAME_BYTES)
MAX_EOU_IN_FLIGHT = 4  # one model answers them one at a time; a flood must not queue without end
CANCEL_WAIT_S = 10.0  # how long a cancel waits for the generation to stop (a stuck upstream)


class LlmSession:
    """One connection: generate and cancel in; start, delta, done, cancelled or error out."""

    def __init__(self, sock: EventSocket[llm.ClientEvent], engine: ChatEngine,
                 model_ready: Callable[[], bool]) -> None:
        self.sock = sock
        self.engine = engine
        self.model_ready = model_ready
        self.current: asyncio.Task[None] | None = None
        self._side: set[asyncio.Task[None]] = set()  # eou answers in progress
        self.prefilling: asyncio.Task[None] | None = None  # the prefills, one after the other
        self.prefill_next: tuple[str, Request] | None = None  # the newest not started yet

    async def run(self) -> None:
        try:
            await self.sock.run(self.on_event)
        finally:
            if self.current is not None and not self.current.done():
                self.current.cancel()
            for task in list(self._side):
                task.cancel()
            self._stop_prefill()

    async def on_event(self, event: llm.ClientEvent) -> None:
        if isinstance(event, llm.Eou):  # beside the generation, in its own task: it must not wait for one
            if len(self._side) >= MAX_EOU_IN_FLIGHT:
                await self.sock.send(ErrorEvent.of("rate_limited", f"at most {MAX_EOU_IN_FLIGHT} eou requests "
                                                   "at once per connection", status=429, id=event.id))
                return
            task = asyncio.create_task(self._eou(event))
            self._side.add(task)
            task.add_done_callback(self._side.discard)
            return
        if isinstance(event, llm.Prefill):  # beside the generation
            try:
                req = to_request(self.engine.settings, event)
            except APIError as exc:
                raise ProtocolError("invalid_event", exc.message, param=exc.param) from None
            # One running at a time, and a newer one replaces one still waiting: stopping a running prefill
            # for the next partial's would throw its work away (a slow CPU never finished one).
            if self.prefill_next is not None:
                await self.sock.send(llm.Prefilled(id=self.prefill_next[0], tokens=0))
            self.prefill_next = (event.id, req)
            if self.prefilling is None or self.prefilling.done():
                self.prefilling = asyncio.create_task(self._prefills())
            return
        if isinstance(event, llm.Cancel):
            if not await self._stop_current():
                await self.sock.send(llm.Cancelled(content=""))
            return
        try:
            req = to_request(self.engine.settings, event)
        except APIError as exc:  # the service's limits on messages: the event is invalid
            raise ProtocolError("invalid_event", exc.message, param=exc.param) from None
        if not self.model_ready():
            await self.sock.error("model_loading", "model is still loading; retry shortly", status=503)
            return
        self._stop_prefill()  # the generation it prepared has come: its copy of the model is needed now
        await self._stop_current()
        self.current = asyncio.create_task(self._generate(req))

    def _stop_prefill(self) -> None:
        if self.prefilling is not None and not self.prefilling.done():
            self.prefilling.cancel()  # a prefill in the model stops at its next batch (the abort callback)
        self.prefilling = self.prefill_next = None  # (one not started is not answered: a generation came)

    async def _prefills(self) -> None:
        while self.prefill_next is not None:
            rid, req = self.prefill_next
            self.prefill_next = None
            await self._prefill(rid, req)

    async def _prefill(self, rid: str, req: Request) -> None:
        tokens = 0
        try:
            if self.model_ready():
                tokens = await self.engine.prefill(req)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.info("prefill failed: %s", exc)  # only an optimisation: the generation does it all
        try:
            await self.sock.send(llm.Prefilled(id=rid, tokens=tokens))
        except Exception:  # the client has gone
            pass

    async def _eou(self, event: llm.Eou) -> None:
        try:
            if not self.model_ready():
                raise APIError(503, "model is still loading; retry shortly", "model_loading")
            p = await self.engine.end_of_utterance(event.text)
            await self.sock.send(llm.EouResult(id=event.id, probability=p))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            try:
                await self.sock.send(generation_error(exc, id=event.id))
            except Exception:  # the client has gone
                pass

    async def _stop_current(self) -> bool:
        """Cancel the generation in flight and wait until it has said ``cancelled``; False if none."""
        task, self.current = self.current, None
        if task is None or task.done():
            return False
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), CANCEL_WAIT_S)
        except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
            pass
        return True

    async def _generate(self, req: Request) -> None:
        gen_id = uuid.uuid4().hex[:16]
        parts: list[str] = []
        calls = ToolCalls()
        stream = self.engine.stream(req)
        try:
            await self.sock.send(llm.Start(id=gen_id, model=self.engine.model_for(req.model),
                                           provider=self.engine.provider_name))
            async for item in stream:
                if isinstance(item, Delta):
                    parts.append(item.content)
                    await self.sock.send(llm.Delta(id=gen_id, content=item.content))
                elif isinstance(item, ToolCallDelta):
                    for call in calls.add(item):  # a whole call, as soon as it is written
                        await self.sock.send(llm.ToolCallEvent(id=gen_id, call=call))
                else:
                    for call in calls.finish():
                        await self.sock.send(llm.ToolCallEvent(id=gen_id, call=call))
                    await self.sock.send(item.event(gen_id))
        except asyncio.CancelledError:
            await stream.aclose()  # stop the model before telling the client it stopped
            try:
                await self.sock.send(llm.Cancelled(id=gen_id, content="".join(parts)))
            except Exception:  # the client has gone
                pass
        except Exception as exc:
            try:
                await self.sock.send(generation_error(exc, id=gen_id))
            except Exception:  # the client has gone
                pass
        finally:
            await stream.aclose()


@router.websocket("/ws")
async def generate_ws(ws: WebSocket) -> None:
    """See docs/protocols.md, LLM."""
    sock = EventSocket(ws, llm.client_events, LIMITS)
    await sock.accept()
    await LlmSession(sock, ws.app.state.engine, lambda: is_ready(ws.app)).run()
