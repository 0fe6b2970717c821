"""Tools in a conversation (issue 13, section 2): the built-ins, the choice of tools per turn, and the
call -> result -> spoken answer sequence, its cancel and its history, with the fakes of the four services
and a real local HTTP server for the webhooks."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from datetime import datetime

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from rvchat_app.app import create_app
from rvchat_app.history import History, chat_messages
from rvchat_app.settings import Settings
from rvchat_app.testing import FakeHub, until
from rvchat_app.tools import Toolbox, calculate, parse_duration, parse_webhooks
from rvchat_common.protocol import llm, page
from rvchat_common.testing import ThreadServer

from .test_session import make


# ----------------------------------------------------------------------------- the built-ins
@pytest.mark.parametrize(("text", "value"), [
    ("12 * 7", 84), ("12 times 7", 84), ("What is 12 times 7?", 84), ("twelve times seven", 84),
    ("(3 + 4) / 2", 3.5), ("2 ** 10", 1024), ("10 divided by 4", 2.5), ("square root of 144", 12),
    ("-5 + 2", -3), ("1,000 plus 1", 1001), ("15 percent of 200", 30), ("15% of 80", 12),
])
def test_calculator(text, value):
    assert calculate(text) == value


@pytest.mark.parametrize("text", [
    "__import__('os').system('id')", "().__class__", "2 ** 100000", "1 / 0", "hello", "", "open('x')",
    "+".join(["1"] * 2000), "(" * 300 + "1" + ")" * 300,
])
def test_calculator_refuses_what_is_not_arithmetic(text):
    with pytest.raises((ValueError, SyntaxError)):
        calculate(text)


@pytest.mark.parametrize(("text", "seconds"), [
    ("5 minutes", 300), ("in 2 hours", 7200), ("90 seconds", 90), ("half an hour", 1800), ("1h30m", 5400),
    ("remind me in five minutes to stretch", 300), ("30", 30), ("1 hour and 30 minutes", 5400),
    ("in 5 minutes and again in 10 minutes", 300),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_routing_for_the_embedded_model_and_auto_for_a_remote_one():
    box = Toolbox(webhooks=parse_webhooks(json.dumps([{
        "name": "get_weather", "url": "http://127.0.0.1:9/", "keywords": ["weather"],
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])))
    named = {"What time is it?": "get_current_time", "what's the date today": "get_current_time",
             "What is 12 times 7?": "calculate", "how much is 3 + 4": "calculate",
             "Remind me in 5 minutes to check the oven": "set_timer", "set a timer for 10 minutes": "set_timer",
             "What's the weather in Paris?": "get_weather", "Tell me the time.": "get_current_time"}
    for text, name in named.items():
        choice = box.choose(text)
        assert choice["tool_choice"].function == {"name": name}, text
        assert [t.function.name for t in choice["tools"]] == [name]
    for text in ("Tell me a joke.", "Who wrote Hamlet?", "I have 2 cats", "Take your time."):
        assert box.choose(text) == {}, text  # no tools at all: the embedded model's auto never calls
    box.provider = "ollama"
    choice = box.choose("Tell me a joke.")
    assert choice["tool_choice"] == "auto"
    assert {t.function.name for t in choice["tools"]} == {"get_current_time", "calculate", "set_timer",
                                                         "get_weather"}
    assert Toolbox(enabled=False).choose("What time is it?") == {}
    assert Toolbox(builtins=["calculator"]).choose("What time is it?") == {}


def test_routing_leaves_ordinary_speech_alone():
    """The 28 read sentences of tests/data/speech name no tool (nor did 71 of bench/answers.py's 72 questions;
    the 72nd is "What is two plus two?", rightly a sum)."""
    from rvchat_common.testing import speech_manifest

    box = Toolbox()
    texts = [m["text"] for m in speech_manifest()]
    assert len(texts) >= 20 and [t for t in texts if box.intent(t)] == []


@pytest.mark.parametrize(("raw", "words"), [
    ("not json", "not JSON"), ('[{"name": "x"}]', "url"), ('[{"name": "bad name!", "url": "http://a"}]', "name"),
    ('[{"name": "calculate", "url": "http://a"}]', "built-in"), ('"a string"', "list"),
    ('[{"name": "a", "url": "http://a"}, {"name": "a", "url": "http://b"}]', "same name"),
    ('[{"name": "a", "url": "ftp://a"}]', "url"),
])
def test_bad_webhook_settings_say_what_is_wrong(raw, words):
    with pytest.raises(ValueError, match=words):
        Settings(tools_webhooks=raw)


def test_the_time_tool_uses_app_timezone():
    box = Toolbox(timezone="Asia/Tokyo")
    call = llm.ToolCall(id="c1", function=llm.FunctionCall(name="get_current_time", arguments="{}"))
    result = asyncio.run(box.run(call, _ctx()))
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo("Asia/Tokyo"))
    assert result.ok and f"{now:%H}:" in result.content and now.strftime("%A") in result.content
    with pytest.raises(ValueError, match="time zone"):
        Settings(timezone="Mars/Olympus")


async def test_timers_past_the_limit_are_refused_saying_so():
    from rvchat_app.tools import MAX_REMINDERS, Context

    box = Toolbox()

    async def remind(seconds: float, message: str) -> None:
        async def deliver() -> None:
            pass
        box.reminders.add(seconds, deliver)

    call = llm.ToolCall(id="t", function=llm.FunctionCall(name="set_timer", arguments='{"duration": "1 hour"}'))
    results = [await box.run(call, Context(remind=remind)) for _ in range(MAX_REMINDERS + 1)]
    assert all(r.ok for r in results[:-1]) and len(box.reminders.tasks) == MAX_REMINDERS
    assert not results[-1].ok and "too many timers pending" in results[-1].content
    await box.close()
    assert not box.reminders.tasks


def _ctx():
    from rvchat_app.tools import Context

    return Context()


# ----------------------------------------------------------------------------- history shapes
def test_history_sends_calls_in_openai_shape_and_drops_halves_cut_by_the_window():
    call = {"id": "c1", "type": "function", "function": {"name": "calculate", "arguments": "{}"}}
    rows = [
        {"role": "user", "content": "12 times 7?", "meta": None},
        {"role": "assistant", "content": "", "meta": {"tool_calls": [call]}},
        {"role": "tool", "content": "12 * 7 = 84", "meta": {"tool_call_id": "c1", "name": "calculate"}},
        {"role": "assistant", "content": "It is 84.", "meta": None},
    ]
    assert chat_messages(rows) == [
        {"role": "user", "content": "12 times 7?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "12 * 7 = 84"},
        {"role": "assistant", "content": "It is 84."}]
    # A window that starts at the result, or a call never answered (cancelled), leaves them out.
    assert chat_messages(rows[2:]) == [{"role": "assistant", "content": "It is 84."}]
    assert chat_messages(rows[:2]) == [{"role": "user", "content": "12 times 7?"}]
    # Every message passes the LLM protocol's own checks.
    for m in chat_messages(rows):
        llm.Message.model_validate(m)


# ----------------------------------------------------------------------------- a turn with a call
async def _text_turn(store_, hub, text, toolbox=None, **settings):
    session, pg = await make(store_, hub, **settings)
    session.tools = toolbox or Toolbox()
    await session.on_event(page.Text(text=text, voice=False))
    return session, pg


async def test_call_result_and_answer_in_one_turn_kept_in_history(store):
    hub = FakeHub()
    hub.tool_arguments["calculate"] = json.dumps({"expression": "12 * 7"})
    session, pg = await _text_turn(store, hub, "What is 12 times 7?")
    try:
        end = await pg.wait("reply_end")
        types = pg.types()
        assert types.index("reply_start") < types.index("tool_call") < types.index("tool_result") \
            < types.index("reply_delta") < types.index("reply_end")
        assert pg.of("tool_call")[0] | {"id": None} == {"type": "tool_call", "turn": 1, "id": None,
                                                       "name": "calculate", "arguments": {"expression": "12 * 7"}}
        result = pg.of("tool_result")[0]
        assert result["ok"] and result["result"] == "12 * 7 = 84. The answer is 84."
        assert end["text"] == "Here it is: 12 * 7 = 84. The answer is 84.."
        gens = hub.last("llm").calls("generate")
        assert gens[0]["tool_choice"] == {"type": "function", "function": {"name": "calculate"}}
        assert gens[0]["max_tokens"] == 40 and gens[1]["max_tokens"] == 80  # the call cut short, not the answer
        assert [t["function"]["name"] for t in gens[0]["tools"]] == ["calculate"]
        # The result went back in OpenAI's shape, and the embedded model answers with no tools offered.
        assert [m["role"] for m in gens[1]["messages"]] == ["user", "assistant", "tool"]
        assert gens[1]["messages"][2] == {"role": "tool", "tool_call_id": result["id"],
                                          "content": "12 * 7 = 84. The answer is 84."}
        assert "tools" not in gens[1]
        conv = await store.get_conversation(session.conversation_id)
        assert [(m["role"], m["content"]) for m in conv["messages"]] == [
            ("user", "What is 12 times 7?"), ("assistant", ""), ("tool", "12 * 7 = 84. The answer is 84."),
            ("assistant", "Here it is: 12 * 7 = 84. The answer is 84..")]
        # The next turn's context has them too.
        hub.reply = "Sure."
        await session.on_event(page.Text(text="Thanks!", voice=False))
        await pg.wait("reply_end", count=2)
        ctx = hub.last("llm").calls("generate")[-1]["messages"]
        assert [m["role"] for m in ctx] == ["user", "assistant", "tool", "assistant", "user"]
        assert ctx[1]["tool_calls"][0]["function"]["name"] == "calculate"
    finally:
        await session.close()


async def test_the_embedded_models_broken_arguments_give_way_to_the_users_words(store):
    """What SmolLM2 wrote for "What is 12 times 7?" under the named choice: not JSON."""
    hub = FakeHub()
    hub.tool_arguments["calculate"] = '{"expression": "}}\n</tool_call>\n12 * 7 = 80\n\nYou can call " }'
    session, pg = await _text_turn(store, hub, "What is 12 times 7?")
    try:
        await pg.wait("reply_end")
        assert pg.of("tool_call")[0]["arguments"] == hub.tool_arguments["calculate"]  # shown as written
        assert pg.of("tool_result")[0]["result"] == "12 * 7 = 84. The answer is 84."
        # Sent back (and kept) with what the tool used, so the LLM service accepts the conversation.
        call = hub.last("llm").calls("generate")[1]["messages"][1]["tool_calls"][0]
        assert json.loads(call["function"]["arguments"]) == {"expression": "12 * 7"}
        llm.GenerateParams.model_validate(hub.last("llm").calls("generate")[1])
    finally:
        await session.close()


async def test_spoken_turn_speaks_the_answer_after_the_call(store):
    hub = FakeHub(transcript="What time is it?")
    session, pg = await make(store, hub)
    session.tools = Toolbox()
    try:
        await session.on_event(page.Text(text="What time is it?"))
        await pg.wait("reply_end")
        hour = datetime.now().astimezone().strftime("%H:")
        assert hour in pg.of("tool_result")[0]["result"]
        spoken = " ".join(e["text"] for e in pg.of("audio"))
        assert hour in spoken and "Here it is" in spoken
        tts = hub.last("tts")
        assert len(tts.calls("flush")) == 1  # one spoken request: the call said nothing before itself
    finally:
        await session.close()


async def test_a_remote_llm_is_offered_every_tool_on_auto_once_its_provider_is_known(store):
    hub = FakeHub()
    hub.provider = "ollama"
    hub.auto_call = "get_current_time"
    session, pg = await _text_turn(store, hub, "Tell me a joke.")
    try:
        await pg.wait("reply_end")
        first = hub.last("llm").calls("generate")[0]
        assert "tools" not in first  # not heard from yet: treated as the embedded model, and no intent here
        assert session.tools.provider == "ollama"  # from its start event
        await session.on_event(page.Text(text="Is it late?", voice=False))
        await pg.wait("reply_end", count=2)
        gens = hub.last("llm").calls("generate")
        assert gens[1]["tool_choice"] == "auto"  # no intent in the words: the remote model decides
        assert {t["function"]["name"] for t in gens[1]["tools"]} == {"get_current_time", "calculate", "set_timer"}
        assert pg.of("tool_call")[0]["name"] == "get_current_time"
        assert gens[2]["tool_choice"] == "auto"  # after the result it may call again (up to 3 calls)
        assert gens[2]["messages"][-1]["role"] == "tool"
        assert pg.of("tool_result")[-1]["ok"]
    finally:
        await session.close()


class Webhook:
    """A real HTTP server for webhook tools: records each request; ``delay`` holds the answer."""

    def __init__(self) -> None:
        self.app = FastAPI()
        self.got: list[dict] = []
        self.delay = 0.0
        self.status = 200
        self.finished = 0
        self.started = threading.Event()
        self.plain = False  # answer a sentence rather than JSON

        @self.app.post("/huge")
        async def huge():
            from fastapi.responses import PlainTextResponse

            return PlainTextResponse("rain " * 200_000)  # 1 MB

        @self.app.post("/drip")
        async def drip():
            from fastapi.responses import StreamingResponse

            async def slowly():
                for _ in range(100):
                    yield b"x"
                    await asyncio.sleep(0.1)
            return StreamingResponse(slowly())

        @self.app.post("/weather")
        async def weather(request: Request):
            body = await request.json()
            self.got.append(body)
            self.started.set()
            await asyncio.sleep(self.delay)
            self.finished += 1
            from fastapi.responses import JSONResponse, PlainTextResponse

            if self.plain:
                return PlainTextResponse(f"The forecast for {body.get('city')}: sunny, 21 C",
                                         status_code=self.status)
            return JSONResponse({"city": body.get("city"), "forecast": "sunny, 21 C"}, status_code=self.status)


def _weather_toolbox(url: str, timeout_s: float = 5) -> Toolbox:
    return Toolbox(webhooks=parse_webhooks(json.dumps([{
        "name": "get_weather", "description": "The weather in a city", "url": f"{url}/weather",
        "timeout_s": timeout_s, "keywords": ["weather"],
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])))


async def test_webhook_tool_posts_the_arguments_and_its_answer_is_the_result(store):
    hook = Webhook()
    with ThreadServer(hook.app) as server:
        hub = FakeHub()
        hub.tool_arguments["get_weather"] = '{"city": "Paris"}'
        session, pg = await _text_turn(store, hub, "What's the weather in Paris?", _weather_toolbox(server.url))
        try:
            end = await pg.wait("reply_end")
            assert hook.got == [{"city": "Paris"}]
            assert json.loads(pg.of("tool_result")[0]["result"]) == {"city": "Paris", "forecast": "sunny, 21 C"}
            assert "sunny" in end["text"]
        finally:
            await session.close()


@pytest.mark.parametrize("failure", ["status", "timeout", "unreachable"])
async def test_a_failing_webhook_is_a_result_saying_so_not_a_failed_turn(store, failure):
    hook = Webhook()
    with ThreadServer(hook.app) as server:
        hook.status = 500 if failure == "status" else 200
        hook.delay = 2.0 if failure == "timeout" else 0.0
        url = "http://127.0.0.1:9" if failure == "unreachable" else server.url
        hub = FakeHub()
        hub.tool_arguments["get_weather"] = '{"city": "Paris"}'
        session, pg = await _text_turn(store, hub, "weather in Paris?", _weather_toolbox(url, timeout_s=0.5))
        try:
            end = await pg.wait("reply_end")
            result = pg.of("tool_result")[0]
            assert not result["ok"]
            assert {"status": "HTTP 500", "timeout": "did not answer within 0.5 s",
                    "unreachable": "could not be reached"}[failure] in result["result"]
            assert "error" not in end and end["text"].startswith("Here it is: Error:")
            assert not pg.of("error")
        finally:
            await session.close()


async def test_a_webhook_answering_too_much_or_too_slowly_is_cut_off():
    hook = Webhook()
    with ThreadServer(hook.app) as server:
        box = Toolbox(webhooks=parse_webhooks(json.dumps([
            {"name": "huge", "url": f"{server.url}/huge"}, {"name": "drip", "url": f"{server.url}/drip",
                                                          "timeout_s": 0.5}])))
        from rvchat_app.tools import RESULT_CHARS, Context

        huge = await box.run(llm.ToolCall(id="a", function=llm.FunctionCall(name="huge", arguments="{}")), Context())
        assert huge.ok and len(huge.content) == RESULT_CHARS and huge.content.startswith("rain rain")
        # Headers at once, then a byte every 0.1 s: the timeout is the whole answer's, not each read's.
        drip = await box.run(llm.ToolCall(id="b", function=llm.FunctionCall(name="drip", arguments="{}")), Context())
        assert not drip.ok and "did not answer within 0.5 s" in drip.content
        await box.close()


async def test_interrupting_cancels_the_webhook_in_flight(store):
    hook = Webhook()
    hook.delay = 5.0
    with ThreadServer(hook.app) as server:
        hub = FakeHub()
        hub.tool_arguments["get_weather"] = '{"city": "Oslo"}'
        session, pg = await _text_turn(store, hub, "What's the weather in Oslo?", _weather_toolbox(server.url))
        try:
            await pg.wait("tool_call")
            await asyncio.get_running_loop().run_in_executor(None, hook.started.wait, 5)
            await session.on_event(page.Interrupt())
            interrupted = await pg.wait("interrupted")
            assert interrupted["cancelled"] == ["tool"]
            assert not pg.of("tool_result")
            await asyncio.sleep(0.3)
            # The request was dropped (the server's handler never finished answering us) and no answer was asked.
            assert hook.finished == 0
            assert len(hub.last("llm").calls("generate")) == 1
            conv = await store.get_conversation(session.conversation_id)
            assert [m["role"] for m in conv["messages"]] == ["user"]  # a call never answered is not kept
            assert session.reply.ended
            # The session goes on: the next turn answers.
            await session.on_event(page.Text(text="Never mind. Hello!", voice=False))
            end = await pg.wait("reply_end", count=1)
            assert end["text"] == hub.reply
        finally:
            await session.close()


async def test_barge_in_by_voice_cancels_the_call_and_answers_the_new_words(store):
    from rvchat_app.testing import ScriptedUser

    hook = Webhook()
    hook.delay = 5.0
    with ThreadServer(hook.app) as server:
        hub = FakeHub(transcript="Actually, tell me a joke.")
        hub.tool_arguments["get_weather"] = '{"city": "Oslo"}'
        session, pg = await make(store, hub, backchannels=False)
        session.tools = _weather_toolbox(server.url)
        try:
            await session.on_event(page.Text(text="What's the weather in Oslo?", voice=True))
            await pg.wait("tool_call")
            await ScriptedUser(session, hub).says(start=0.2, end=0.8)
            interrupted = await pg.wait("interrupted")
            assert interrupted["turn"] == 1 and interrupted["cancelled"] == ["tool"]
            end = await pg.wait("reply_end", turn=2)
            assert end["text"] == hub.reply
            assert not pg.of("tool_result") and hook.finished == 0
        finally:
            await session.close()


async def test_a_speculative_reply_calls_its_tool_only_once_it_is_the_turn(store):
    """The reply starts on a short pause; a timer must not be set for words the user then goes on from."""
    from rvchat_app.testing import ScriptedUser

    hub = FakeHub()
    hub.tool_arguments["set_timer"] = json.dumps({"duration": "1 minute", "message": "stretch"})
    session, pg = await make(store, hub, speculative_silence_ms=150, vad_min_silence_ms=500,
                             turn_end_complete_ms=500, turn_end_incomplete_ms=900)
    session.tools = Toolbox()
    try:
        user = ScriptedUser(session, hub)
        # Speculation starts 150 ms into the pause and its call is made; the user goes on before the turn ends.
        await user.says(start=0.4, end=1.0, text="Remind me in 1 minute to stretch", tail=0.3)
        await until(lambda: hub.last("llm").calls("generate"), what="the speculative generation")
        await user.says(start=1.3, end=2.0, text="and then drink water.")
        end = await pg.wait("reply_end")
        calls = pg.of("tool_call")
        assert len(calls) == 1 and len(session.tools.reminders.tasks) == 1  # one timer, for the whole utterance
        assert pg.of("tool_result")[0]["result"].endswith("stretch and then drink water.")
        assert end["turn"] == calls[0]["turn"]
    finally:
        await session.close()
        await session.tools.close()


async def test_a_timer_speaks_its_reminder_when_due(store):
    hub = FakeHub()
    hub.tool_arguments["set_timer"] = json.dumps({"duration": "1 second", "message": "check the oven"})
    session, pg = await _text_turn(store, hub, "Remind me in 1 second to check the oven")
    try:
        await pg.wait("reply_end")
        assert "Timer set for 1 second" in pg.of("tool_result")[0]["result"]
        notice = await pg.wait("notice", timeout=5)
        assert notice["message"] == "Reminder: check the oven"
        end = await pg.wait("reply_end", count=2, timeout=5)
        assert end["text"] == "Reminder: check the oven."
        assert len(hub.last("llm").calls("generate")) == 2  # the reminder is said without the LLM
        conv = await store.get_conversation(session.conversation_id)
        assert conv["messages"][-1]["content"] == "Reminder: check the oven."
    finally:
        await session.close()


async def test_a_timer_due_after_the_page_left_is_kept_in_the_history(store):
    hub = FakeHub()
    hub.tool_arguments["set_timer"] = json.dumps({"duration": "1 second", "message": "call Sam"})
    box = Toolbox()
    session, pg = await _text_turn(store, hub, "Remind me in 1 second to call Sam", box)
    await pg.wait("reply_end")
    cid = session.conversation_id
    await session.close()
    await asyncio.sleep(1.4)
    conv = await store.get_conversation(cid)
    assert conv["messages"][-1]["content"] == "Reminder: call Sam"
    assert conv["messages"][-1]["source"] == "reminder"
    await box.close()


async def test_no_tools_when_the_words_ask_for_none_or_tools_are_off(store):
    hub = FakeHub()
    session, pg = await _text_turn(store, hub, "Tell me about Paris.")
    try:
        await pg.wait("reply_end")
        assert "tools" not in hub.last("llm").calls("generate")[0]
        session.tools = None  # APP_TOOLS=false
        await session.on_event(page.Text(text="What time is it?", voice=False))
        await pg.wait("reply_end", count=2)
        assert "tools" not in hub.last("llm").calls("generate")[-1]
        assert not pg.of("tool_call")
    finally:
        await session.close()


def test_api_message_uses_the_same_tools(tmp_path):
    hub = FakeHub()
    hub.tool_arguments["calculate"] = json.dumps({"expression": "12 * 7"})
    settings = Settings(db_path=str(tmp_path / "h.sqlite3"))
    with TestClient(create_app(settings, factories=hub.factories())) as c:
        r = c.post("/api/message", json={"text": "What is 12 times 7?"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["text"] == "Here it is: 12 * 7 = 84. The answer is 84.."
        assert body["tool_calls"] == [{"id": body["tool_calls"][0]["id"], "name": "calculate",
                                       "arguments": {"expression": "12 * 7"}, "ok": True,
                                       "result": "12 * 7 = 84. The answer is 84."}]
        conv = c.get(f"/api/conversations/{body['conversation_id']}").json()
        assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "tool", "assistant"]
        # A timer set through the API has no page to speak in: it is written into the conversation when due.
        hub.tool_arguments["set_timer"] = json.dumps({"duration": "1 second", "message": "x"})
        timer = c.post("/api/message", json={"text": "Remind me in 1 second to call Sam",
                                             "conversation_id": body["conversation_id"]}).json()
        assert timer["tool_calls"][0]["result"].startswith("Timer set for 1 second")
        import time

        time.sleep(1.5)
        conv = c.get(f"/api/conversations/{body['conversation_id']}").json()
        assert (conv["messages"][-1]["content"], conv["messages"][-1]["source"]) == ("Reminder: call Sam", "reminder")
        # What the embedded model wrote for it: the answer lists what the calculator ran with, and that too.
        hub.tool_arguments["calculate"] = '{"expression": "}}\n</tool_call>\n12 * 7 = 80\n\nYou can call " }'
        call = c.post("/api/message", json={"text": "What is 12 times 7?"}).json()["tool_calls"][0]
        assert call["arguments"] == {"expression": "12 * 7"} and call["ok"]
        assert call["arguments_written"] == hub.tool_arguments["calculate"]
    with TestClient(create_app(Settings(db_path=str(tmp_path / "o.sqlite3"), tools=False),
                               factories=hub.factories())) as c:
        body = c.post("/api/message", json={"text": "What is 12 times 7?"}).json()
        assert "tool_calls" not in body and "tools" not in hub.last("llm").calls("generate")[-1]


async def test_history_context_of_a_reopened_conversation(store):
    """A new session's context (another page, or after a restart) has the calls in OpenAI's shape."""
    history = History(store, 8)
    await history.add_user("12 times 7?", "text")
    call = {"id": "c9", "type": "function", "function": {"name": "calculate", "arguments": "{}"}}
    await history.add_tool_messages([{"role": "assistant", "content": "", "tool_calls": [call]},
                                     {"role": "tool", "tool_call_id": "c9", "name": "calculate",
                                      "content": "84"}], "text")
    await history.add_assistant("84.", source="text")
    again = History(store, 8, history.conversation_id)
    assert [m["role"] for m in await again.context()] == ["user", "assistant", "tool", "assistant"]


# ----------------------------------------------------------------------------- over the real LLM service
@pytest.fixture(scope="module")
def weather_hook():
    hook = Webhook()
    # The embedded model uses a sentence, not JSON: told {"city": "Paris", "forecast": "sunny, 21 C"} it
    # answered "Paris is a beautiful city with many amazing things to do."; told "The forecast for Paris:
    # sunny, 21 C", "The weather in Paris is sunny, 21 degrees Celsius."
    hook.plain = True
    with ThreadServer(hook.app) as server:
        hook.url = server.url
        yield hook


@pytest.fixture(scope="module")
def tools_app(llm_service, weather_hook, tmp_path_factory):
    """main_app as a process over the real LLM service (the embedded SmolLM2), with a webhook tool served
    by a local HTTP server; typed chat needs no other service."""
    from rvchat_app.testing import app_env
    from rvchat_common.testing import ServiceProcess

    hooks = [{"name": "get_weather", "description": "The weather forecast for a city",
              "url": f"{weather_hook.url}/weather", "keywords": ["weather", "forecast"],
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    env = app_env({"llm": llm_service}, tmp_path_factory.mktemp("tools") / "h.sqlite3",
                  APP_TOOLS_WEBHOOKS=json.dumps(hooks))
    with ServiceProcess("rvchat_app", "APP_", env) as proc:
        yield proc


def _ask(app, text: str) -> dict:
    import httpx

    r = httpx.post(f"{app.url}/api/message", json={"text": text}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_real_arithmetic_tool_answers_84(tools_app):
    body = _ask(tools_app, "What is 12 times 7?")
    calls = body["tool_calls"]
    assert [c["name"] for c in calls] == ["calculate"] and calls[0]["ok"], calls
    assert calls[0]["result"].startswith("12 * 7 = 84.")
    assert "84" in body["text"], body["text"]
    conv = __import__("httpx").get(f"{tools_app.url}/api/conversations/{body['conversation_id']}").json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert conv["messages"][1]["meta"]["tool_calls"][0]["function"]["name"] == "calculate"


def test_real_time_tool_answer_says_the_hour(tools_app):
    now = datetime.now().astimezone()
    body = _ask(tools_app, "What time is it?")
    assert [c["name"] for c in body["tool_calls"]] == ["get_current_time"]
    hours = {now.strftime("%H"), now.strftime("%I").lstrip("0"), str(now.hour)}
    later = (now.hour + 1) % 24  # the turn may straddle the hour
    hours |= {f"{later:02d}", str(later), str(later % 12 or 12)}
    assert any(re.search(rf"\b{h}[:.]\d\d|\b{h} ?(?:am|pm|o'clock)", body["text"], re.IGNORECASE) for h in hours), body["text"]


def test_real_webhook_tool(tools_app, weather_hook):
    body = _ask(tools_app, "What's the weather in Paris?")
    assert [c["name"] for c in body["tool_calls"]] == ["get_weather"] and body["tool_calls"][0]["ok"]
    assert weather_hook.got and isinstance(weather_hook.got[-1].get("city"), str)
    assert "sunny" in body["text"].lower() or "21" in body["text"], body["text"]


@pytest.mark.browser
def test_page_shows_the_call_in_the_reply_bubble(tools_app, tmp_path):
    """The real page in Chromium, typed chat over the real LLM: the call runs in the turn's bubble above the
    answer, and a reopened conversation shows it as a line of its own."""
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        try:
            pg = browser.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(tools_app.url)
            pg.wait_for_function("window.rvchat && window.rvchat.connected", timeout=10000)
            pg.fill("#text", "What is 12 times 7?")
            pg.press("#text", "Enter")
            pg.wait_for_selector("#messages .msg.assistant .tool.ok", timeout=60000)
            pg.wait_for_function("window.rvchat.events.includes('reply_end')", timeout=60000)
            bubble = pg.evaluate("""() => { const m = [...document.querySelectorAll('#messages .msg.assistant')].pop();
                return {tool: m.querySelector('.tool').textContent, body: m.querySelector('.body').textContent}; }""")
            assert bubble["tool"] == "⚙ calculate: 12 * 7 = 84. The answer is 84."
            assert "84" in bubble["body"]
            pg.reload()
            pg.wait_for_selector("#messages .msg.tool", timeout=10000)
            shown = pg.evaluate("() => [...document.querySelectorAll('#messages .msg')].map((m) => m.className)")
            assert shown == ["msg user", "msg tool", "msg assistant"]
            assert not errors, errors
        finally:
            browser.close()


@pytest.mark.models
def test_through_the_ollama_provider(tmp_path):
    """main_app -> the real LLM service (provider ollama) -> the fake Ollama (llm/tests/fake_ollama.py, which
    speaks Ollama's tool protocol): a named call reaches Ollama as the one tool; once main_app has seen the
    provider, every tool goes on auto and Ollama's call is run and answered."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx
    from rvchat_app.testing import app_env
    from rvchat_common.testing import ServiceProcess, free_port

    port = free_port()
    fake = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[2] / "llm/tests/fake_ollama.py"),
                             str(port), "llama3.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ollama = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{ollama}/api/version", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        llm_env = {"LLM_PROVIDER": "ollama", "OLLAMA_BASE_URL": ollama, "LLM_MODEL": "llama3.2"}
        with ServiceProcess("rvchat_llm", "LLM_", llm_env) as llm_proc, \
                ServiceProcess("rvchat_app", "APP_", app_env({"llm": llm_proc}, tmp_path / "h.sqlite3")) as app:
            first = _ask(app, "What is 12 times 7?")
            asked = [r["body"] for r in httpx.get(f"{ollama}/_requests", timeout=5).json() if r["path"] == "/api/chat"]
            tools_sent = [[t["function"]["name"] for t in r.get("tools") or []] for r in asked]
            assert ["calculate"] in tools_sent  # named: sent alone (Ollama has no tool_choice)
            assert first["tool_calls"][0]["name"] == "calculate" and "84" in first["text"], first
            second = _ask(app, "Is it late?")
            asked = [r["body"] for r in httpx.get(f"{ollama}/_requests", timeout=5).json() if r["path"] == "/api/chat"]
            last_with_tools = [r for r in asked if r.get("tools")][-1]
            assert {t["function"]["name"] for t in last_with_tools["tools"]} == {
                "get_current_time", "calculate", "set_timer"}
            # The fake Ollama calls the first tool it is offered; its answer repeats the result.
            assert second["tool_calls"][0]["name"] == "get_current_time" and second["tool_calls"][0]["ok"]
            assert "get_current_time said: It is" in second["text"], second
    finally:
        fake.terminate()
        fake.wait(10)


async def test_spoken_question_calls_the_tool_and_speaks_the_answer(app_service, services):
    """A voice turn over the four real services: the question as speech (Piper's voice, from the TTS service),
    the tool called in the turn, and the answer spoken with the result in it."""
    import httpx
    import websockets
    from rvchat_app.testing import events_of, voice_turn
    from rvchat_common.audio import decode_audio, float_to_pcm16

    async with httpx.AsyncClient(timeout=60) as client:
        wav = (await client.post(f"{services['tts'].url}/v1/audio/speech",
                                 json={"model": "tts-1", "input": "What time is it?", "response_format": "wav"})).content
    question = float_to_pcm16(decode_audio(wav))
    ws = await websockets.connect(f"{app_service.ws_url}/ws", max_size=None)
    try:
        hello = json.loads(await ws.recv())
        for _ in range(100):  # the session's four service streams up
            if all(s["up"] for s in hello["services"]["services"].values()):
                break
            ev = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if ev["type"] == "services":
                hello["services"] = ev
        result = await voice_turn(ws, question, pad_s=1.0)
    finally:
        await ws.close()
    now = datetime.now().astimezone()
    transcript = events_of(result, "transcript")[0]["text"]
    assert "time" in transcript.lower(), transcript
    call, done = events_of(result, "tool_call")[0], events_of(result, "tool_result")[0]
    assert call["name"] == done["name"] == "get_current_time" and done["ok"]
    order = [e["type"] for e in result["events"]]
    assert order.index("transcript") < order.index("tool_call") < order.index("tool_result") < order.index("audio")
    spoken = " ".join(e["text"] for e in events_of(result, "audio"))
    hours = {str(h) for h in (now.hour, now.hour % 12 or 12, (now.hour + 1) % 24, (now.hour + 1) % 12 or 12)}
    assert any(re.search(rf"\b0?{h}[:.]\d\d", spoken) for h in hours), spoken
    assert len(result["audio"]) > 22050  # at least half a second of speech
