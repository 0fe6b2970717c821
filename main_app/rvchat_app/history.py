"""History: what the conversation keeps and what the LLM sees of it.

Owns: the current conversation id of a session, saving the user's and the assistant's messages
(a reply saved whole, failed or interrupted with what was heard), the user message that a
continued utterance rewrites, and the LLM's context window (which moves only in jumps so that the
LLM's prompt cache is reused).
"""

from __future__ import annotations

from typing import Any

from rvchat_common.errors import APIError

from .store import Store


def _kept(m: dict) -> bool:
    """A row the LLM sees: a user or assistant turn with words, a tool call, or a tool's result."""
    meta = m.get("meta") or {}
    return (m["role"] in ("user", "assistant") and bool(m["content"])) or bool(meta.get("tool_calls")) \
        or (m["role"] == "tool" and bool(meta.get("tool_call_id")))


def chat_messages(rows: list[dict]) -> list[dict]:
    """Stored messages as LLM chat messages in OpenAI's shapes: user and assistant turns with content,
    an assistant message's ``tool_calls`` and each ``tool`` result with its ``tool_call_id``.

    A window's edge can cut a call from its result: a result whose call is not in the window, or a call
    whose results are not all there, is left out (the LLM service refuses either, as OpenAI does)."""
    out: list[dict] = []
    for m in rows:
        if not _kept(m):
            continue
        meta = m.get("meta") or {}
        if m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": meta["tool_call_id"], "content": m["content"]})
        elif meta.get("tool_calls"):
            out.append({"role": "assistant", "content": m["content"], "tool_calls": meta["tool_calls"]})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    kept: list[dict] = []
    for i, msg in enumerate(out):
        if msg["role"] == "tool":
            call = next((k for k in reversed(kept) if k.get("tool_calls")), None)
            if call is None or msg["tool_call_id"] not in {c["id"] for c in call["tool_calls"]}:
                continue
        elif msg.get("tool_calls"):
            ids = {c["id"] for c in msg["tool_calls"]}
            answered = set()
            for later in out[i + 1:]:
                if later["role"] != "tool":
                    break
                answered.add(later["tool_call_id"])
            if not ids <= answered:
                if not msg["content"]:
                    continue
                msg = {"role": "assistant", "content": msg["content"]}
        kept.append(msg)
    return kept


class History:
    """One session's (or one API request's) view of the store."""

    def __init__(self, store: Store, history_messages: int, conversation_id: str | None = None) -> None:
        self.store = store
        self.history_messages = history_messages
        self.conversation_id = conversation_id
        self._window_start: dict[str, int | None] = {}  # conversation -> first message id in the window

    async def exists(self) -> bool:
        return self.conversation_id is not None and await self.store.exists(self.conversation_id)

    async def ensure(self) -> tuple[str, bool]:
        """The conversation to write to, created if there is none; (id, created)."""
        if self.conversation_id is None or not await self.store.exists(self.conversation_id):
            self.conversation_id = (await self.store.create_conversation())["id"]
            return self.conversation_id, True
        return self.conversation_id, False

    async def open(self, cid: str | None) -> bool:
        """Switch to conversation ``cid`` (None: a new one on the next message); False if it does not exist."""
        if cid is not None and not await self.store.exists(cid):
            return False
        self.conversation_id = cid
        return True

    async def conversation(self) -> dict | None:
        return await self.store.get_conversation(self.conversation_id) if self.conversation_id else None

    async def add_user(self, text: str, source: str, replaces: int | None = None) -> int:
        """Save the user's message; ``replaces`` is an earlier part of the same utterance, rewritten whole."""
        if replaces is not None:
            await self.store.update_message(replaces, content=text)
            return replaces
        cid, _ = await self.ensure()
        return (await self.store.add_message(cid, "user", text, source=source))["id"]

    async def add_assistant(self, text: str, *, source: str, interrupted: bool = False,
                            meta: dict[str, Any] | None = None) -> int:
        cid, _ = await self.ensure()
        msg = await self.store.add_message(cid, "assistant", text, interrupted=interrupted, source=source,
                                           meta=meta)
        return msg["id"]

    async def save_partial(self, message_id: int | None, text: str, source: str) -> int:
        """The reply so far, marked interrupted until it is finished: a crash or a closed page loses
        no committed turn (the row is there, with what was said up to then)."""
        if message_id is None:
            return await self.add_assistant(text, source=source, interrupted=True, meta={"in_progress": True})
        await self.store.update_message(message_id, content=text)
        return message_id

    async def save_final(self, message_id: int | None, text: str, *, source: str, interrupted: bool = False,
                         meta: dict[str, Any] | None = None) -> int:
        """The reply as it ended (replacing its partial row, if any)."""
        if message_id is None:
            return await self.add_assistant(text, source=source, interrupted=interrupted, meta=meta)
        await self.store.update_message(message_id, content=text, interrupted=interrupted, meta=meta or {})
        return message_id

    async def add_tool_messages(self, messages: list[dict], source: str) -> None:
        """A turn's tool calls and results (tools.answer_calls), kept as rows: an assistant row with the
        calls in ``meta.tool_calls`` and a ``tool`` row per result with ``meta.tool_call_id`` and ``name``."""
        cid, _ = await self.ensure()
        for m in messages:
            if m["role"] == "tool":
                await self.store.add_message(cid, "tool", m["content"], source=source,
                                             meta={"tool_call_id": m["tool_call_id"], "name": m.get("name")})
            else:
                await self.store.add_message(cid, "assistant", m.get("content") or "", source=source,
                                             meta={"tool_calls": m["tool_calls"]})

    async def mark_interrupted(self, message_id: int, heard: str, meta: dict[str, Any]) -> None:
        await self.store.update_message(message_id, content=heard, interrupted=True, meta=meta)

    async def recent(self) -> list[dict]:
        """The last ``history_messages`` messages as chat messages (a sliding window)."""
        rows = await self.store.messages(self.conversation_id, last=self.history_messages)
        return chat_messages(rows)

    async def context(self, pending: str | None = None) -> list[dict]:
        """The conversation as the LLM sees it: a window that only moves forward in jumps.

        A window sliding by one exchange per turn changes the prompt's beginning every
        turn, so the LLM re-evaluates all of it (about 0.5-1 s on 2 cores). Kept fixed,
        the previous prompt is a prefix of the new one and the LLM's KV cache reuses it:
        only the new user message is evaluated. When the window holds more than
        ``history_messages``, it jumps to the last exchange.

        With ``pending`` (the user's words so far, not stored yet, possibly none) it is the context the
        reply to them will get, for the LLM's prefill; the window is not moved for it.
        """
        cid = self.conversation_id
        recent = await self.store.messages(cid, last=self.history_messages + 8) if cid is not None else []
        recent = [m for m in recent if _kept(m)]
        if pending is not None:
            recent.append({"id": (recent[-1]["id"] + 1) if recent else 0, "role": "user", "content": pending})
        start = self._window_start.get(cid) if cid is not None else None
        window = [m for m in recent if start is not None and m["id"] >= start]
        if start is None or not window or len(window) > self.history_messages:
            at = max(0, len(recent) - 3)  # the last exchange and the new message
            while at > 0 and recent[at]["role"] != "user":
                at -= 1  # from the exchange's user message, with its tool calls and results
            window = recent[at:]
            if pending is None:
                self._window_start[cid] = window[0]["id"] if window else None
        if pending is not None:  # the last row (its words may be none yet, which chat_messages leaves out)
            return [*chat_messages(window[:-1]), {"role": "user", "content": pending}]
        return chat_messages(window)


async def history_for_request(store: Store, history_messages: int, conversation_id: str | None) -> History:
    """A History for one API request: the given conversation (404 if unknown) or a new one."""
    history = History(store, history_messages, conversation_id)
    if conversation_id is None:
        await history.ensure()
    elif not await store.exists(conversation_id):
        raise APIError(404, f"no conversation {conversation_id!r}", "not_found", param="conversation_id")
    return history
