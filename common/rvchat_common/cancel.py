"""Work for a client that has gone is stopped, not finished for nobody.

:func:`while_connected` runs a request's work as a task and watches the connection at the same
time; when the client disconnects, the task is cancelled and the request's cancel flag is set.
Awaiting code stops at its next ``await`` (a request still queued for the model leaves the queue);
blocking code in a worker thread cannot be interrupted from outside, so long loops there call
:func:`raise_if_cancelled` (or read :func:`cancel_flag`) between steps: the flag travels to the
thread with the context, as ``asyncio.to_thread`` copies it.

Measured before this existed: nine non-streaming ``/generate`` calls dropped by their client after
3 s kept the LLM busy (every request 503 ``queue_full``) for 35 s.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from .errors import APIError

log = logging.getLogger("rvchat.cancel")

T = TypeVar("T")

_flag: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("cancel_flag", default=None)

CLIENT_GONE = 499  # nginx's "client closed request": only ever seen in logs and metrics


class ClientGone(APIError):
    def __init__(self) -> None:
        super().__init__(CLIENT_GONE, "the client closed the connection; the work was stopped",
                         "client_closed_request")


class Cancelled(Exception):
    """Raised in a worker thread by :func:`raise_if_cancelled`."""


def cancel_flag() -> threading.Event | None:
    """The current request's cancel flag (None outside :func:`while_connected`)."""
    return _flag.get()


def cancelled() -> bool:
    flag = _flag.get()
    return flag is not None and flag.is_set()


def raise_if_cancelled() -> None:
    if cancelled():
        raise Cancelled()


async def _disconnected(request: Request) -> None:
    # Called once the body has been read: the only message left to come is http.disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def while_connected(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelled as soon as the client disconnects (then :class:`ClientGone`).

    The work runs in the request's own task (an async generator started here goes on in the same
    task, as httpx streams inside it require); a watcher task cancels it. Call it after the
    request body has been read.
    """
    flag = threading.Event()
    token = _flag.set(flag)  # copied into every worker thread started from here
    me = asyncio.current_task()
    assert me is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        try:
            await _disconnected(request)
        except Exception:  # noqa: BLE001 - a receive that fails means the connection is gone as well
            pass
        gone = True
        flag.set()
        me.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        me.uncancel()
        log.info("%s %s: client gone; work cancelled", request.method, request.url.path)
        raise ClientGone() from None
    finally:
        watcher.cancel()
        _flag.reset(token)
