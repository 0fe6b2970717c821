"""Tool calling, provider-neutral: checking the tools, tool choice and tool messages of a request,
and assembling streamed call pieces into whole calls.

The service speaks OpenAI's shapes on every endpoint (``/v1/chat/completions``, ``/generate``,
``/ws``): a tool is ``{"type": "function", "function": {"name", "description"?, "parameters"?}}``,
an assistant message carries ``tool_calls`` (``{"id", "type": "function", "function": {"name",
"arguments"}}``, ``arguments`` the text of a JSON object) and a ``tool`` message answers one call by
its ``tool_call_id``. Inside, messages are dicts of that shape; each provider translates them
(Ollama wants the arguments as an object and the tool's name; the local model reads them as text).

Everything wrong with them is a 400 in the shared error shape, as OpenAI answers: a malformed tool,
a schema that is not JSON Schema, a tool choice naming no offered tool, a tool message answering
no call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from rvchat_common.errors import APIError

from .providers.base import ToolCallDelta

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128  # OpenAI's limit
# JSON levels in one tool's parameters. jsonschema's check_schema recurses per level and overflowed
# Python's stack at 100 nested properties (200 levels), a 500 for one request; 32 levels are 16
# nested objects, more than any tool needs (OpenAI's strict mode allows 10).
MAX_SCHEMA_DEPTH = 32
CHOICES = ("none", "auto", "required")


def _bad(message: str, param: str, code: str) -> APIError:
    return APIError(400, message, code, param=param)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def check_tools(tools: Any, tool_choice: Any, max_chars: int) -> tuple[list[dict[str, Any]] | None, Any]:
    """The request's tools and tool choice, checked and normalised.

    Returns (tools or None, choice): choice is None (no tools), "none", "auto", "required" or
    ``{"type": "function", "function": {"name": ...}}``. ``max_chars`` bounds one tool's JSON.
    """
    if tools is None or tools == []:
        if tool_choice not in (None, "none"):
            raise _bad("tool_choice is only allowed when tools are given", "tool_choice",
                       "invalid_tool_choice")
        return None, None
    if not isinstance(tools, list):
        raise _bad("tools: expected a list of tools", "tools", "invalid_tools")
    if len(tools) > MAX_TOOLS:
        raise _bad(f"tools: at most {MAX_TOOLS} tools, got {len(tools)}", "tools", "invalid_tools")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if hasattr(tool, "model_dump"):  # a protocol Tool (WebSocket, /generate)
            tool = tool.model_dump()
        if not isinstance(tool, dict) or tool.get("type") != "function" \
                or not isinstance(tool.get("function"), dict):
            raise _bad(f'{where}: expected {{"type": "function", "function": {{"name", "parameters"}}}}',
                       where, "invalid_tools")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise _bad(f"{where}.function.name: 1 to 64 letters, digits, _ or -, got {name!r}", where,
                       "invalid_tools")
        if name in names:
            raise _bad(f"{where}.function.name: '{name}' is given twice", where, "invalid_tools")
        names.add(name)
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad(f"{where}.function.description: expected a string", where, "invalid_tools")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise _bad(f"{where}.function.parameters: expected a JSON Schema object", where, "invalid_tools")
        if _depth(params) > MAX_SCHEMA_DEPTH:
            raise _bad(f"{where}.function.parameters: nested deeper than {MAX_SCHEMA_DEPTH} levels", where,
                       "invalid_tools")
        try:
            Draft202012Validator.check_schema(params)
        except SchemaError as exc:
            raise _bad(f"{where}.function.parameters is not a valid JSON Schema: {exc.message}", where,
                       "invalid_tools") from None
        if params.get("type", "object") != "object":
            raise _bad(f"{where}.function.parameters: the arguments must be an object "
                       f"(\"type\": \"object\"), got {params.get('type')!r}", where, "invalid_tools")
        clean: dict[str, Any] = {"name": name, "parameters": params}
        if description:
            clean["description"] = description
        if len(json.dumps(clean)) > max_chars:
            raise _bad(f"{where}: longer than the {max_chars}-character limit", where, "invalid_tools")
        out.append({"type": "function", "function": clean})
    return out, _choice(tool_choice, names)


def _depth(value: Any) -> int:
    """JSON nesting depth, without recursion (the point is not to overflow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_SCHEMA_DEPTH:  # (past the limit the answer is known)
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _choice(tool_choice: Any, names: set[str]) -> Any:
    if hasattr(tool_choice, "model_dump"):
        tool_choice = tool_choice.model_dump()
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, str):
        if tool_choice in CHOICES:
            return tool_choice
        raise _bad(f"tool_choice: expected none, auto, required or "
                   f"{{\"type\": \"function\", \"function\": {{\"name\"}}}}, got {tool_choice!r}",
                   "tool_choice", "invalid_tool_choice")
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function" \
            or not isinstance(name, str):
        raise _bad('tool_choice: expected none, auto, required or {"type": "function", "function": '
                   '{"name": "..."}}', "tool_choice", "invalid_tool_choice")
    if name not in names:
        raise _bad(f"tool_choice names '{name}', which is not among the tools ({', '.join(sorted(names))})",
                   "tool_choice", "invalid_tool_choice")
    return {"type": "function", "function": {"name": name}}


def chosen_name(tool_choice: Any) -> str | None:
    """The function a named tool choice forces, else None."""
    return tool_choice["function"]["name"] if isinstance(tool_choice, dict) else None


def check_messages(messages: list[dict[str, Any]]) -> None:
    """Tool calls only in assistant messages, each with an id, a name and arguments that are a JSON
    object; every tool message answering a call made before it. Raises a 400."""
    calls: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        tool_calls = m.get("tool_calls")
        if tool_calls:
            if m["role"] != "assistant":
                raise _bad(f"{where}: only assistant messages carry tool_calls", where, "invalid_messages")
            for j, call in enumerate(tool_calls):
                check_call(call, f"{where}.tool_calls.{j}")
                calls[call["id"]] = call["function"]["name"]
        if m["role"] == "tool":
            cid = m.get("tool_call_id")
            if not isinstance(cid, str) or not cid:
                raise _bad(f"{where}: a tool message needs the tool_call_id of the call it answers", where,
                           "invalid_messages")
            if cid not in calls:
                raise _bad(f"{where}: tool_call_id '{cid}' answers no call made by an earlier assistant "
                           "message", where, "invalid_messages")
        elif m.get("tool_call_id") is not None:
            raise _bad(f"{where}: only tool messages carry a tool_call_id", where, "invalid_messages")


def check_call(call: Any, where: str) -> None:
    ok = isinstance(call, dict) and isinstance(call.get("id"), str) and call["id"] \
        and call.get("type", "function") == "function" and isinstance(call.get("function"), dict) \
        and isinstance(call["function"].get("name"), str) \
        and isinstance(call["function"].get("arguments"), str)
    if not ok:
        raise _bad(f'{where}: expected {{"id", "type": "function", "function": {{"name", "arguments"}}}} '
                   "with arguments as a string", where, "invalid_messages")
    try:
        args = json.loads(call["function"]["arguments"])
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise _bad(f"{where}.function.arguments: not the text of a JSON object", where, "invalid_messages")


def tool_names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """call id -> function name, over the calls the messages made."""
    return {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}


def message_text(m: dict[str, Any]) -> str:
    """What a message costs in the context window, as text: its content and its calls."""
    calls = m.get("tool_calls")
    extra = "".join(c["function"]["name"] + c["function"]["arguments"] for c in calls) if calls else ""
    return (m.get("content") or "") + extra


@dataclass
class ToolCalls:
    """Streamed pieces (:class:`ToolCallDelta`) assembled into whole calls, in index order.

    ``add`` returns the calls a piece completes: a piece of a new index completes the ones before
    it (providers write one call after another); ``finish`` gives the rest.
    """

    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)

    def add(self, d: ToolCallDelta) -> list[dict[str, Any]]:
        call = self.calls.get(d.index)
        if call is None:
            call = self.calls[d.index] = {"id": d.id or new_call_id(), "type": "function",
                                          "function": {"name": d.name or "", "arguments": ""}}
        else:
            if d.id:
                call["id"] = d.id
            if d.name and not call["function"]["name"]:
                call["function"]["name"] = d.name
        call["function"]["arguments"] += d.arguments
        return self._complete(lambda i: i < d.index)

    def finish(self) -> list[dict[str, Any]]:
        return self._complete(lambda i: True)

    def _complete(self, before: Any) -> list[dict[str, Any]]:
        out = []
        for i in sorted(self.calls):
            if i not in self.done and before(i):
                self.done.add(i)
                out.append(self.calls[i])
        return out

    def all(self) -> list[dict[str, Any]]:
        return [self.calls[i] for i in sorted(self.calls)]
