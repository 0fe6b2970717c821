"""Tools the assistant may call during a conversation, and which ones a turn offers the LLM.

Owns: the built-in tools (the date and time, arithmetic, a timer), the user's HTTP webhook tools
(``APP_TOOLS_WEBHOOKS``), the choice of ``tools`` / ``tool_choice`` for a turn (:meth:`Toolbox.choose`),
running a call (:meth:`Toolbox.run`: a failure is a result saying so, never a failed turn), the
reminders a timer leaves behind, and the loop that feeds results back to the LLM
(:func:`answer_calls`), shared by the voice session and ``POST /api/message``.

Choosing: a remote LLM (Ollama, an OpenAI-compatible server) gets every tool with ``auto`` and
decides. The embedded SmolLM2-135M practically never calls a tool on ``auto`` (bench/results/tools.md:
0 of 24 questions under the voice prompt, and tools cost its first piece of reply 202 -> 316 ms),
while a *named* ``tool_choice`` gives a valid call every time (4/4, arguments under a grammar). So
for it, main_app recognises the obvious intents in the user's words ("what time is it", "what is 12
times 7", "remind me in 5 minutes", a webhook's ``keywords``) and names that tool; other turns get
no tools at all and cost nothing.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import math
import operator
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import BaseModel, Field, ValidationError, field_validator
from rvchat_common.protocol import llm

log = logging.getLogger("rvchat.app.tools")

BUILTINS = ("time", "calculator", "timer")
LOCAL_PROVIDERS = {"local", "fake"}  # models that only call a tool when it is named
MAX_ROUNDS = 3  # tool calls in one turn before the model must answer in words
RESULT_CHARS = 2000  # a tool's result, as the LLM sees it (a webhook may answer a whole page)
# A built-in named for the embedded model: its arguments are rarely used (the user's words come first) and
# for "What is 12 times 7?" it wrote 80 tokens of them (the reply's limit): 3.5-4.3 s, against 2.2-2.4 s
# cut at 32 (the call still comes, finish_reason "length"). 40 leaves room for a timer's duration and message.
NAMED_CALL_TOKENS = 40
MAX_TIMER_S = 24 * 3600
MAX_REMINDERS = 100  # pending at once, per main_app


# --------------------------------------------------------------------------- webhooks (settings)
class WebhookSpec(BaseModel):
    """One user-defined tool: its arguments are POSTed as JSON to ``url``; the answer is the result."""

    model_config = {"extra": "forbid"}

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(10.0, gt=0, le=120)
    headers: dict[str, str] = Field(default_factory=dict)
    keywords: list[str] = Field(default_factory=list, description="Words in the user's turn that name "
                                "this tool for a local model (which never picks a tool by itself).")

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, v: str) -> str:
        if v in BUILTIN_NAMES.values():
            raise ValueError(f"{v!r} is a built-in tool's name")
        return v


def parse_webhooks(raw: str) -> list[WebhookSpec]:
    """``APP_TOOLS_WEBHOOKS``: a JSON list of webhook tools (empty: none). ValueError says what is wrong."""
    if not raw.strip():
        return []
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"APP_TOOLS_WEBHOOKS is not JSON: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("APP_TOOLS_WEBHOOKS must be a JSON list of tools")  # noqa: TRY004 (pydantic reports ValueError)
    try:
        specs = [WebhookSpec.model_validate(item) for item in data]
    except ValidationError as exc:
        raise ValueError(f"APP_TOOLS_WEBHOOKS: {exc}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("APP_TOOLS_WEBHOOKS: two tools have the same name")
    return specs


def parse_builtins(raw: str) -> list[str]:
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILTINS]
    if unknown:
        raise ValueError(f"unknown built-in tool(s) {', '.join(unknown)}: choose from {', '.join(BUILTINS)}")
    return names


# --------------------------------------------------------------------------- arithmetic, safely
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"sqrt": math.sqrt, "abs": abs, "round": round}
_WORDS = [  # spoken operators, longest first
    (r"to the power of", "**"), (r"multiplied by", "*"), (r"divided by", "/"), (r"square root of", "sqrt "),
    (r"percent of", "/100*"), (r"% of", "/100*"), (r"times", "*"), (r"plus", "+"), (r"minus", "-"), (r"over", "/"),
    (r"x", "*"), (r"×", "*"), (r"÷", "/"), (r"\^", "**"), (r"squared", "**2"), (r"cubed", "**3"),
]
_NUMBER_WORDS = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"])}
_NUMBER_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
                      "ninety": 90, "hundred": 100, "thousand": 1000, "a": 1, "an": 1})
MAX_POWER = 1000  # 9**9**9 would take the event loop for minutes
MAX_TOKENS = 200  # "1+1+...+1" 2,000 terms long nests deeper than Python's recursion limit
WEBHOOK_MAX_BYTES = 64 * 1024  # read of a webhook's answer (the LLM sees RESULT_CHARS of it)


def _spoken_to_symbols(text: str) -> str:
    s = text.lower().replace(",", "")
    for word, sym in _WORDS:
        s = re.sub(rf"(?<![a-z]){word}(?![a-z])", f" {sym} ", s)
    s = re.sub(r"\b(" + "|".join(k for k in _NUMBER_WORDS if len(k) > 2) + r")\b",
               lambda m: str(_NUMBER_WORDS[m.group(1)]), s)
    return s


def calculate(expression: str) -> float | int:
    """Evaluate arithmetic (digits, + - * / // % **, parentheses, sqrt/abs/round; spoken operators
    such as "12 times 7" too) without eval(): only these nodes of Python's own parser are walked."""
    text = _spoken_to_symbols(expression)
    text = re.sub(r"[^0-9.+\-*/%()a-z ]", " ", text)
    # Whatever else is left (what is, equal, ?) is not part of the sum.
    tokens = re.findall(r"sqrt|abs|round|\*\*|//|[0-9.]+|[-+*/%()]", text)
    if len(tokens) > MAX_TOKENS:
        raise ValueError(f"too long (more than {MAX_TOKENS} numbers and operators)")
    text = " ".join(tokens)
    text = re.sub(r"(sqrt|abs|round) ([0-9.]+)", r"\1(\2)", text)  # "square root of 144"
    if not text:
        raise ValueError("no arithmetic in it")
    tree = ast.parse(text, mode="eval")

    def ev(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_POWER:
                raise ValueError("that power is too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and len(node.args) == 1 and not node.keywords):
            return _FUNCS[node.func.id](ev(node.args[0]))
        raise ValueError("only numbers and + - * / % ** ( ) are allowed")

    try:
        value = ev(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return value


def _words(value: float) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# --------------------------------------------------------------------------- durations
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600}


def parse_duration(text: str) -> float | None:
    """Seconds in "5 minutes", "in two hours", "90 seconds", "half an hour", "1h30m"; None if none."""
    s = _spoken_to_symbols(text.replace("half an hour", "30 minutes").replace("a half", "0.5"))
    total, last_end = 0.0, None
    for m in re.finditer(r"(\d+(?:\.\d+)?)\s*(hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)(?![a-z])", s):
        # "1 hour 30 minutes" / "1h30m" is one duration; "in 5 minutes and again in 10" starts a second one
        if last_end is not None and not re.fullmatch(r"\s*(?:and\s*)?", s[last_end:m.start()]):
            break
        num, unit = m.groups()
        total += float(num) * _UNITS[unit.rstrip("s") if unit != "s" else "s"]
        last_end = m.end()
    if last_end is None:
        bare = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*", s)
        if bare:  # a bare number from the model's arguments: seconds
            return float(bare.group(1))
        return None
    return total


# --------------------------------------------------------------------------- the tools
BUILTIN_NAMES = {"time": "get_current_time", "calculator": "calculate", "timer": "set_timer"}

_BUILTIN_DEFS = {
    "time": llm.FunctionDef(
        name="get_current_time", description="The current date, day of the week and time.",
        parameters={"type": "object", "properties": {}}),
    "calculator": llm.FunctionDef(
        name="calculate", description="Work out arithmetic exactly, e.g. 12 * 7 or (3 + 4) / 2.",
        parameters={"type": "object", "properties": {"expression": {"type": "string"}},
                    "required": ["expression"]}),
    "timer": llm.FunctionDef(
        name="set_timer", description="Set a timer or reminder: after the duration the assistant says the "
        "message.", parameters={"type": "object", "properties": {
            "duration": {"type": "string", "description": "How long from now, e.g. 5 minutes."},
            "message": {"type": "string", "description": "What to remind the user of."}},
            "required": ["duration", "message"]}),
}

# The intents a local model cannot pick a tool for by itself: cheap patterns over the user's words.
_INTENTS = {
    "time": re.compile(r"\b(what(?:'s| is)? the time|what time|time is it|the time (?:now|please)|current time"
                       r"|what(?:'s| is) (?:the )?(?:date|day)|today'?s date|what day|which day|date today"
                       r"|day of the week|tell me the (?:time|date|day))\b", re.IGNORECASE),
    "calculator": re.compile(r"(?:\d[\d.,]*|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b)"
                             r"\s*(?:[-+*/x×÷^]|times|plus|minus|divided by|multiplied by|to the power of)\s*"
                             r"-?(?:\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b)"
                             r"|square root of \d|\d+\s*(?:squared|cubed)\b|\d+ percent of \d", re.IGNORECASE),
    "timer": re.compile(r"\b(remind me|set (?:a |an |the )?(?:timer|alarm|reminder)|timer for|start a timer)\b",
                        re.IGNORECASE),
}


@dataclass
class Result:
    ok: bool
    content: str
    arguments: dict[str, Any] | None = None  # what the tool really used (the history keeps these)


@dataclass
class Context:
    """What a call may need of its turn: the user's words (a fallback for a local model's arguments) and
    where a reminder goes when it is due."""

    user_text: str = ""
    remind: Callable[[float, str], Awaitable[None]] | None = None
    # The call was named by main_app for the embedded model, whose arguments are often not what was asked:
    # where the user's words hold them (a sum, a duration), those win.
    words_first: bool = False


class Reminders:
    """Timers set by the ``set_timer`` tool: each calls its ``deliver`` when due. They live in main_app's
    memory (a restart loses them) and outlive the page that set them (delivery decides what then)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()

    def add(self, seconds: float, deliver: Callable[[], Awaitable[None]]) -> None:
        if len(self.tasks) >= MAX_REMINDERS:
            raise ValueError(f"too many timers pending ({MAX_REMINDERS})")

        async def fire() -> None:
            await asyncio.sleep(seconds)
            try:
                await deliver()
            except Exception:
                log.exception("a reminder could not be delivered")

        task = asyncio.create_task(fire(), name="reminder")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Toolbox:
    """The tools of one main_app (built from settings), what each turn offers, and running a call."""

    def __init__(self, *, enabled: bool = True, builtins: list[str] | None = None,
                 webhooks: list[WebhookSpec] | None = None, timezone: str | None = None) -> None:
        self.enabled = enabled
        self.builtins = list(BUILTINS if builtins is None else builtins)
        self.webhooks = {w.name: w for w in webhooks or []}
        self.zone = _zone(timezone)
        self.provider: str | None = None  # the LLM service's provider, from its latest `start` event
        self.reminders = Reminders()
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> Toolbox:
        return cls(enabled=settings.tools, builtins=parse_builtins(settings.tools_builtins),
                   webhooks=parse_webhooks(settings.tools_webhooks), timezone=settings.timezone)

    async def close(self) -> None:
        await self.reminders.close()
        if self._client is not None:
            await self._client.aclose()

    # ------------------------------------------------------------------ what a turn offers
    def definitions(self) -> list[llm.Tool]:
        defs = [llm.Tool(function=_BUILTIN_DEFS[b]) for b in self.builtins]
        defs += [llm.Tool(function=llm.FunctionDef(name=w.name, description=w.description or None,
                                                   parameters=w.parameters)) for w in self.webhooks.values()]
        return defs

    def names(self) -> set[str]:
        return {BUILTIN_NAMES[b] for b in self.builtins} | set(self.webhooks)

    def choose(self, user_text: str) -> dict[str, Any]:
        """``tools`` and ``tool_choice`` (and a shorter ``max_tokens`` for a named built-in) for a turn's
        first generation, to lay over its options ({} when it gets none).

        A remote provider decides itself (``auto``). The embedded model (and an LLM not heard from yet:
        its provider arrives with its first `start` event) is offered one tool, named, when the words ask
        for it, and none otherwise (module docstring: auto never calls and costs 114 ms)."""
        if not self.enabled or not self.names():
            return {}
        if self.provider is not None and self.provider not in LOCAL_PROVIDERS:
            return {"tools": self.definitions(), "tool_choice": "auto"}
        name = self.intent(user_text)
        if name is None:
            return {}
        tool = next(t for t in self.definitions() if t.function.name == name)
        choice: dict[str, Any] = {"tools": [tool], "tool_choice": llm.NamedToolChoice(function={"name": name})}
        if name not in self.webhooks:  # a webhook's arguments are its own: not cut
            choice["max_tokens"] = NAMED_CALL_TOKENS
        return choice

    def intent(self, text: str) -> str | None:
        """The tool the user's words plainly ask for, if any."""
        if not text:
            return None
        lowered = text.lower()
        for hook in self.webhooks.values():
            if any(re.search(rf"\b{re.escape(k.lower())}\b", lowered) for k in hook.keywords):
                return hook.name
        for builtin in ("timer", "calculator", "time"):  # "remind me in 5 minutes" is not a clock question
            if builtin in self.builtins and _INTENTS[builtin].search(text):
                return BUILTIN_NAMES[builtin]
        return None

    def follow_up(self) -> dict[str, Any]:
        """Tools for the generation after a result: a remote model may call again, the embedded one answers."""
        if self.provider is not None and self.provider not in LOCAL_PROVIDERS:
            return {"tools": self.definitions(), "tool_choice": "auto"}
        return {}

    # ------------------------------------------------------------------ running a call
    async def run(self, call: llm.ToolCall, ctx: Context) -> Result:
        """Run one call; any failure is a result that says so (the model tells the user)."""
        name = call.function.name
        args = _object(call.function.arguments)
        try:
            if name in self.webhooks:
                if args is None:
                    return Result(False, f"Error: the arguments of {name} are not a JSON object.", {})
                return await self._webhook(self.webhooks[name], args)
            args = args or {}
            if name == "get_current_time" and "time" in self.builtins:
                return Result(True, self._now(), {})
            if name == "calculate" and "calculator" in self.builtins:
                return self._calculate(args, ctx)
            if name == "set_timer" and "timer" in self.builtins:
                return await self._timer(args, ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a tool's bug must not fail the turn
            log.exception("tool %s failed", name)
            return Result(False, f"Error: {name} failed ({type(exc).__name__}).")
        return Result(False, f"Error: there is no tool named {name}.")

    def _now(self) -> str:
        now = datetime.now(self.zone)
        hour12 = now.strftime("%I:%M %p").lstrip("0")
        return (f"It is {hour12} ({now:%H:%M}) on {now:%A}, {now:%B} {now.day}, {now.year} "
                f"({now.tzname() or 'local time'}).")

    def _calculate(self, args: dict, ctx: Context) -> Result:
        # The embedded model's expression is rarely the sum asked (for "What is 12 times 7?" it wrote text
        # that is not JSON; for "345 plus 12", "{245} + 12"): when main_app named the tool, the arithmetic
        # in the user's own words comes first, the model's expression only when the words hold none.
        tries = [str(args.get("expression") or "")]
        if ctx.words_first:
            tries.insert(0, ctx.user_text)
        else:
            tries.append(ctx.user_text)
        error: Exception | None = None
        for expression in tries:
            if not expression.strip():
                continue
            try:
                value = calculate(expression)
            except (ValueError, SyntaxError, OverflowError, TypeError, RecursionError) as exc:
                error = error or exc
                continue
            shown, said = _sum_text(expression), _words(value)
            # The answer said twice: told "345 + 12 = 357" the embedded model answered "345 + 12 = 467"; with
            # "The answer is 357." after it, 6 of 6 sums were answered right (5 of 6 with the sum alone).
            return Result(True, f"{shown} = {said}. The answer is {said}.", {"expression": shown})
        return Result(False, f"Error: could not work out {tries[0]!r}: {error or 'no arithmetic'}.",
                      {"expression": tries[0]})

    async def _timer(self, args: dict, ctx: Context) -> Result:
        # For "Set a timer for 10 minutes" the embedded model wrote duration "" and the message "How long to
        # remind the user of.": named by main_app, the duration and the "to ..." come from the words first.
        said = [parse_duration(ctx.user_text), parse_duration(str(args.get("duration") or ""))]
        seconds = next((d for d in (said if ctx.words_first else said[::-1]) if d), None)
        if seconds is None or seconds <= 0:
            return Result(False, "Error: how long the timer should run is missing; ask the user.")
        if seconds > MAX_TIMER_S:
            return Result(False, "Error: a timer can run for at most 24 hours.")
        asked = re.search(r"\bremind me (?:in [^,]*? )?(?:to|that|about) (.+?)(?: in \d.*)?[.!?]*$", ctx.user_text,
                          re.IGNORECASE)
        message = str(args.get("message") or "").strip()
        if ctx.words_first or not message:
            message = asked.group(1).strip() if asked else ("your timer is done" if ctx.words_first else message)
        message = message or "your timer is done"
        if ctx.remind is None:
            return Result(False, "Error: timers are not available here.")
        try:
            await ctx.remind(seconds, message)
        except ValueError as exc:  # too many pending
            return Result(False, f"Error: the timer was not set: {exc}.", {"duration": _span(seconds),
                                                                         "message": message})
        return Result(True, f"Timer set for {_span(seconds)}: the user will be reminded: {message}.",
                      {"duration": _span(seconds), "message": message})

    async def _webhook(self, hook: WebhookSpec, args: dict) -> Result:
        if self._client is None:
            self._client = httpx.AsyncClient()
        try:
            async with asyncio.timeout(hook.timeout_s), self._client.stream(
                    "POST", hook.url, json=args, headers=hook.headers, timeout=hook.timeout_s) as resp:
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body.extend(chunk)
                    if len(body) >= WEBHOOK_MAX_BYTES:  # a whole page answered: the start is enough
                        break
        except (httpx.TimeoutException, TimeoutError):
            return Result(False, f"Error: {hook.name} did not answer within {hook.timeout_s:g} s.", args)
        except httpx.HTTPError as exc:
            return Result(False, f"Error: {hook.name} could not be reached ({type(exc).__name__}).", args)
        text = bytes(body[:WEBHOOK_MAX_BYTES]).decode(resp.encoding or "utf-8", errors="replace").strip()
        if resp.status_code >= 400:
            return Result(False, f"Error: {hook.name} failed with HTTP {resp.status_code}: {text[:300]}", args)
        return Result(True, text[:RESULT_CHARS] or "(no content)", args)


def _sum_text(expression: str) -> str:
    """The arithmetic of ``expression`` as symbols ("What is 12 times 7?" -> "12 * 7")."""
    s = _spoken_to_symbols(expression)
    s = re.sub(r"[^0-9.+\-*/%()a-z ]", " ", s)
    tokens = re.findall(r"sqrt|abs|round|\*\*|//|[0-9.]+|[-+*/%()]", s)
    return " ".join(tokens)


def _object(arguments: str | None) -> dict | None:
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return None
    return args if isinstance(args, dict) else None


def _span(seconds: float) -> str:
    parts = []
    for unit, n in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= n:
            k = int(seconds // n)
            seconds -= k * n
            parts.append(f"{k} {unit}{'s' if k != 1 else ''}")
    return " ".join(parts) or "0 seconds"


def _zone(name: str | None) -> Any:
    if not name:
        return datetime.now().astimezone().tzinfo  # the server's own zone
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Paris)") from None


# --------------------------------------------------------------------------- the loop after a call
@dataclass
class Hooks:
    """What a turn does around its calls: show them, keep them in the history, deliver a reminder."""

    on_call: Callable[[llm.ToolCall], Awaitable[None]]
    on_result: Callable[[llm.ToolCall, Result], Awaitable[None]]
    remember: Callable[[list[dict]], Awaitable[None]]
    remind: Callable[[float, str], Awaitable[None]] | None = None


@dataclass
class Turn:
    """The tool calls one turn made, in OpenAI's message shapes, as sent back to the LLM."""

    messages: list[dict] = field(default_factory=list)
    calls: int = 0


async def answer_calls(stream: Any, toolbox: Toolbox, messages: list[dict], options: dict[str, Any],
                       user_text: str, hooks: Hooks) -> Turn:
    """After a generation: while it ended in tool calls, run them, give the results back and generate
    again (the spoken reply continues in the same turn, on the same ReplyStream). Cancelling the task
    that runs this (barge-in) cancels the call in flight, a webhook's request too.

    ``stream`` is a :class:`~rvchat_app.reply.ReplyStream` whose first generation has run."""
    turn = Turn()
    if stream.provider:
        toolbox.provider = stream.provider
    ctx = Context(user_text=user_text, remind=hooks.remind,
                  words_first=toolbox.provider is None or toolbox.provider in LOCAL_PROVIDERS)
    while stream.tool_calls:
        calls = list(stream.tool_calls)
        said = stream.round_text.strip()
        made, results = [], []
        for call in calls:
            turn.calls += 1
            await hooks.on_call(call)
            stream.tool_running = call.function.name
            result = await toolbox.run(call, ctx)
            stream.tool_running = None
            await hooks.on_result(call, result)
            # Kept and sent back with the arguments the tool used: the model's own may not even be JSON
            # (the LLM service then refuses the whole conversation).
            used = result.arguments if result.arguments is not None else _object(call.function.arguments) or {}
            made.append({"id": call.id, "type": "function",
                         "function": {"name": call.function.name, "arguments": json.dumps(used)}})
            results.append({"role": "tool", "tool_call_id": call.id, "name": call.function.name,
                            "content": result.content[:RESULT_CHARS]})
        new = [{"role": "assistant", "content": said, "tool_calls": made}, *results]
        await hooks.remember(new)
        turn.messages += new
        last = turn.calls >= MAX_ROUNDS
        extra = {} if last else toolbox.follow_up()
        sent = [{k: v for k, v in m.items() if k != "name"} for m in turn.messages]
        if not await stream.start([*messages, *sent], **options, **extra):
            from .reply import ReplyFailed

            raise ReplyFailed("llm", "the language model connection was lost")
        await stream.run()
    return turn
