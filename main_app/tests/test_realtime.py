"""``WS /v1/realtime`` driven by the official ``openai`` client (GA ``client.realtime`` and
``client.beta.realtime``).

The first part runs main_app in-process under uvicorn with fake service streams: the protocol's
shapes, the text conversation, the error events. The second part runs main_app as a process over the
four real services and holds a voice conversation with a real recording: server VAD, transcription,
audio out, barge-in and truncate.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Annotated, Any, get_args, get_origin

import httpx
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types import realtime as openai_rt
from openai.types.beta import realtime as openai_beta_rt
from rvchat_app.app import create_app
from rvchat_app.settings import Settings
from rvchat_app.testing import FakeHub, app_env, load_pcm16
from rvchat_common.audio import Resampler, float_to_pcm16, pcm16_to_float
from rvchat_common.protocol import realtime as rt
from rvchat_common.testing import ServiceProcess, ThreadServer, speech_manifest, speech_sample, wer

CLIP = "librispeech_61-70968-0000.wav"
EVENT_WAIT_S = 60  # the slowest model step on a busy 2-core machine, with a wide margin


# --------------------------------------------------------------------------- helpers
def client_for(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", websocket_base_url=f"{url.replace('http', 'ws')}/v1"
    )


async def collect(conn, until: str, *, seen: list | None = None, timeout: float = EVENT_WAIT_S) -> list:
    """Events (as dicts) up to and including the first of type ``until``."""
    events = [] if seen is None else seen
    while True:
        raw = await asyncio.wait_for(conn.recv_bytes(), timeout)
        event = json.loads(raw)
        events.append(event)
        if event["type"] == until:
            return events


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def user_text(text: str) -> dict:
    """A ``conversation.item.create`` of a user's typed message."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def session_update(**session: Any) -> dict:
    """A GA ``session.update`` (the beta dialect's session has no ``type``)."""
    return {"type": "session.update", "session": {"type": "realtime", **session}}


def truncate(item_id: str, audio_end_ms: int) -> dict:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def audio_of(events: list[dict], kind: str = "response.output_audio.delta") -> bytes:
    """The PCM16 of the ``kind`` deltas, joined."""
    return b"".join(base64.b64decode(e["delta"]) for e in of(events, kind))


def history(url: str, conversation_id: str) -> list[dict]:
    """The conversation's stored messages, as the page's history API gives them."""
    return httpx.get(f"{url}/api/conversations/{conversation_id}").json()["messages"]


def to_24k(pcm16_16k: bytes) -> bytes:
    return float_to_pcm16(Resampler(16000, rt.SAMPLE_RATE)(pcm16_to_float(pcm16_16k)))


async def stream_audio(conn, pcm24: bytes, *, frame_ms: int = 40, realtime: bool = True) -> None:
    """Append audio as a microphone would: ``frame_ms`` frames, at real time."""
    step = rt.SAMPLE_RATE * 2 * frame_ms // 1000
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n, i in enumerate(range(0, len(pcm24), step)):
        await conn.send(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm24[i : i + step]).decode()}
        )
        if realtime:
            await asyncio.sleep(max(0.0, t0 + (n + 1) * frame_ms / 1000 - loop.time()))


def _models_by_type(union: Any) -> dict[str, type]:
    members = get_args(get_args(union)[0]) if get_origin(union) is Annotated else get_args(union)
    return {t: m for m in members for t in get_args(m.model_fields["type"].annotation)}


GA_MODELS = _models_by_type(openai_rt.RealtimeServerEvent)
BETA_MODELS = _models_by_type(openai_beta_rt.RealtimeServerEvent)


def check_shapes(events: list[dict], beta: bool = False) -> None:
    """Every event validates against the openai package's own model for its type (strictly: the client
    itself only constructs them, so a wrong shape would surface in the application, not in the client)."""
    models = BETA_MODELS if beta else GA_MODELS
    for event in events:
        assert event["type"] in models, f"the openai package has no server event {event['type']!r}"
        models[event["type"]].model_validate(event)


# --------------------------------------------------------------------------- in-process, fake services
@pytest.fixture
def hub():
    return FakeHub(reply="The capital of France is Paris. It is a lovely city.")


def fake_server(tmp_path, hub: FakeHub, **settings: Any) -> ThreadServer:
    """main_app in-process over the hub's fake services (the URLs are never dialled)."""
    nowhere = "http://127.0.0.1:9"
    settings = Settings(
        db_path=str(tmp_path / "rt.sqlite3"),
        vad_url=nowhere,
        stt_url=nowhere,
        tts_url=nowhere,
        llm_url=nowhere,
        status_interval_s=60,
        **settings,
    )
    return ThreadServer(create_app(settings, factories=hub.factories()))


@pytest.fixture
def fake_app(tmp_path, hub):
    with fake_server(tmp_path, hub) as server:
        yield server


async def test_text_conversation_with_the_openai_client(fake_app):
    async with client_for(fake_app.url).realtime.connect(model="gpt-realtime") as conn:
        created = await collect(conn, "session.created")
        await conn.send(session_update(output_modalities=["text"], instructions="Answer in one sentence."))
        updated = (await collect(conn, "session.updated"))[-1]
        assert updated["session"]["output_modalities"] == ["text"]
        assert updated["session"]["instructions"] == "Answer in one sentence."
        await conn.send(user_text("Capital of France?"))
        await conn.send({"type": "response.create"})
        events = await collect(conn, "response.done")
    check_shapes(created + [updated] + events)
    order = types(events)
    assert (
        order.index("conversation.item.added")
        < order.index("response.created")
        < order.index("response.output_item.added")
        < order.index("response.output_text.delta")
        < order.index("response.output_text.done")
        < order.index("response.done")
    )
    text = "".join(e["delta"] for e in of(events, "response.output_text.delta"))
    assert text.strip() == "The capital of France is Paris. It is a lovely city."
    assert of(events, "response.output_text.done")[0]["text"].strip() == text.strip()
    done = of(events, "response.done")[0]["response"]
    assert done["status"] == "completed" and done["usage"]["output_tokens"] > 0
    assert done["output"][0]["content"][0] == {"type": "output_text", "text": text.strip()}
    # The conversation is the page's: the same history.
    assert [(m["role"], m["content"]) for m in history(fake_app.url, done["conversation_id"])] == [
        ("user", "Capital of France?"),
        ("assistant", text.strip()),
    ]


async def test_bad_events_get_error_events_and_the_connection_lives(fake_app):
    bad = [
        ("not json", "invalid_json", None),
        (json.dumps({"type": "session.nope"}), "unknown_event", "type"),
        (
            json.dumps(
                {
                    "type": "session.update",
                    "event_id": "e1",
                    "session": {
                        "type": "realtime",
                        "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}},
                    },
                }
            ),
            "invalid_event",
            "session",
        ),
        (
            json.dumps(session_update(audio={"input": {"format": {"type": "audio/pcmu"}}})),
            "invalid_event",
            "session",
        ),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "***"}), "invalid_event", "audio"),
        (json.dumps({"type": "input_audio_buffer.commit"}), "commit_with_server_vad", None),
        (json.dumps(truncate("item_x", 10)), "item_not_found", "item_id"),
        (json.dumps({"type": "response.cancel"}), "response_cancel_not_active", None),
        ("[]", "invalid_event", "type"),
        (json.dumps({"type": 5}), "invalid_event", "type"),
        ("[" * 5000 + "]" * 5000, "invalid_json", None),
        (
            json.dumps({"type": "session.update", "session": {"instructions": "x" * 30000}}),
            "invalid_event",
            "session",
        ),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}),
            "invalid_event",
            "audio",
        ),
        (
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "system",
                        "content": [{"type": "input_text", "text": "Be rude."}],
                    },
                }
            ),
            "system_message_unsupported",
            "item.role",
        ),
        (
            json.dumps({"type": "response.create", "response": {"conversation": "none"}}),
            "invalid_event",
            "response",
        ),
        (json.dumps({"type": "conversation.item.delete", "item_id": "x"}), "unknown_event", "type"),
        (
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "message", "role": "user", "content": []},
                }
            ),
            "invalid_event",
            "item",
        ),
    ]
    async with client_for(fake_app.url).realtime.connect(model="gpt-realtime") as conn:
        await collect(conn, "session.created")
        for raw, code, param in bad:
            await conn.send_raw(raw)
            error = (await collect(conn, "error"))[-1]
            check_shapes([error])
            assert error["error"]["code"] == code, (raw, error)
            assert error["error"]["type"] == "invalid_request_error"
            if param:
                assert error["error"]["param"] == param, error
        assert error["error"]["event_id"] is None
        await conn.send_raw(bad[2][0])
        assert (await collect(conn, "error"))[-1]["error"]["event_id"] == "e1"  # names the client's event
        # Still serving: a good event is answered.
        await conn.send(session_update(instructions="Hi"))
        assert (await collect(conn, "session.updated"))[-1]["session"]["instructions"] == "Hi"
    # A binary frame (not part of the protocol) too.
    async with websockets.connect(f"{fake_app.url.replace('http', 'ws')}/v1/realtime") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(b"\x00\x01")
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["code"] == "unexpected_binary"
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"


async def test_beta_client_gets_the_beta_dialect(fake_app):
    async with client_for(fake_app.url).beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        created = await collect(conn, "session.created")
        assert created[-1]["session"]["input_audio_format"] == "pcm16"
        await conn.send(
            {
                "type": "session.update",
                "session": {
                    "modalities": ["text", "audio"],
                    "voice": "nova",
                    "turn_detection": None,
                    "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16",
                },
            }
        )
        updated = (await collect(conn, "session.updated"))[-1]
        assert updated["session"]["voice"] == "nova" and updated["session"]["turn_detection"] is None
        await conn.send(user_text("Capital of France?"))
        await conn.send({"type": "response.create"})
        events = await collect(conn, "response.done")
    check_shapes(created + [updated] + events, beta=True)
    kinds = set(types(events))
    assert {
        "conversation.item.created",
        "response.audio.delta",
        "response.audio_transcript.delta",
        "response.audio.done",
        "response.audio_transcript.done",
    } <= kinds
    assert not {k for k in kinds if "output_audio" in k}
    transcript = of(events, "response.audio_transcript.done")[0]["transcript"]
    assert transcript.strip() == "The capital of France is Paris. It is a lovely city."
    pcm = audio_of(events, "response.audio.delta")
    assert len(pcm) > rt.SAMPLE_RATE  # the fake speaks 200 ms a word: over half a second at 24 kHz


async def test_truncate_cuts_the_stored_reply_to_what_was_heard(fake_app, hub):
    """The fake TTS speaks 200 ms a word: "The capital of France is Paris." is 1.2 s, "It is a lovely
    city." 1 s. Played for 1.6 s, the first sentence and two words of the second were heard."""
    async with client_for(fake_app.url).realtime.connect(model="gpt-realtime") as conn:
        await collect(conn, "session.created")
        await conn.send(session_update(audio={"output": {"voice": "nova"}}))
        await collect(conn, "session.updated")
        assert {"type": "config", "voice": "nova", "speed": 1.0} in hub.last("tts").sent  # the live TTS link
        await conn.send(user_text("Capital of France?"))
        await conn.send({"type": "response.create"})
        events = await collect(conn, "response.done")
        item_id = of(events, "response.output_item.done")[0]["item"]["id"]
        pcm = audio_of(events)
        assert abs(len(pcm) / 2 / rt.SAMPLE_RATE - 2.2) < 0.01  # resampled from 22050 Hz, same duration
        await conn.send(truncate(item_id, 1600))
        truncated = (await collect(conn, "conversation.item.truncated"))[-1]
        assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == 1600
        # Past the audio's end: refused, and the voice is fixed once the assistant has spoken.
        await conn.send(truncate(item_id, 5000))
        assert (await collect(conn, "error"))[-1]["error"]["code"] == "invalid_audio_end_ms"
        await conn.send(session_update(audio={"output": {"voice": "echo"}}))
        assert (await collect(conn, "error"))[-1]["error"]["code"] == "cannot_update_voice"
        cid = of(events, "response.done")[0]["response"]["conversation_id"]
        assistant = history(fake_app.url, cid)[-1]
    check_shapes(events + [truncated])
    assert assistant["role"] == "assistant" and assistant["interrupted"]
    assert assistant["content"] == "The capital of France is Paris. It is"
    # The client leaving later does not undo it.
    after = history(fake_app.url, cid)[-1]
    assert after["content"] == assistant["content"]


async def test_audio_and_tool_output_items_and_response_cancel(fake_app, hub):
    """An input_audio item is transcribed (the fake STT hears the hub's transcript) and written to the
    history before the response that follows it; a function_call_output is kept; a response can be
    cancelled while it is written."""
    hub.token_delay = 0.2  # slow enough to cancel mid-reply
    tone = float_to_pcm16(0.1 * np.sin(np.arange(rt.SAMPLE_RATE) * 2 * np.pi * 220 / rt.SAMPLE_RATE))
    async with client_for(fake_app.url).realtime.connect(model="gpt-realtime") as conn:
        await collect(conn, "session.created")
        await conn.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'},
            }
        )
        tool = (await collect(conn, "conversation.item.done"))[-1]
        assert tool["item"]["type"] == "function_call_output" and tool["item"]["call_id"] == "call_1"
        await conn.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": base64.b64encode(tone).decode()}],
                },
            }
        )
        await conn.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = await collect(conn, "response.output_text.delta")
        await conn.send({"type": "response.cancel"})
        await collect(conn, "response.done", seen=events)
        cid = of(events, "response.done")[0]["response"]["conversation_id"]
        messages = history(fake_app.url, cid)
    check_shapes([tool] + events)
    added = of(events, "conversation.item.added")[0]
    assert added["previous_item_id"] == tool["item"]["id"] and "audio" not in added["item"]["content"][0]
    transcript = of(events, "conversation.item.input_audio_transcription.completed")[0]
    assert transcript["item_id"] == added["item"]["id"]
    assert transcript["transcript"] == "What is the capital of France?"
    assert types(events).index("conversation.item.input_audio_transcription.completed") < types(events).index(
        "response.output_text.delta"
    )
    assert hub.last("stt").utterances[-1]  # the one-off STT stream got the audio (at 16 kHz)
    assert abs(len(hub.last("stt").utterances[-1]) / 2 / 16000 - 1.0) < 0.01
    done = of(events, "response.done")[0]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    assert done["output"][0]["status"] == "incomplete"
    assert messages[0] == {
        **messages[0],
        "role": "user",
        "content": "What is the capital of France?",
    }
    assert [m["role"] for m in messages] in (["user"], ["user", "assistant"])


async def test_a_full_server_turns_a_realtime_client_away(tmp_path, hub):
    with fake_server(tmp_path, hub, max_sessions=1) as server:
        url = f"{server.url.replace('http', 'ws')}/v1/realtime"
        async with websockets.connect(url) as first:
            assert json.loads(await first.recv())["type"] == "session.created"
            async with websockets.connect(url) as second:
                error = json.loads(await second.recv())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await second.recv()
            check_shapes([error])
            assert error["error"]["code"] == "server_busy" and error["error"]["type"] == "server_error"
            assert closed.value.rcvd.code == 1013  # try again later
            await first.send(json.dumps({"type": "input_audio_buffer.clear"}))
            assert json.loads(await first.recv())["type"] == "input_audio_buffer.cleared"


async def test_the_api_key_is_the_openai_clients(tmp_path, hub):
    with fake_server(tmp_path, hub, api_key="s3cret") as server:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="s3cret")
        async with client.realtime.connect(model="gpt-realtime") as conn:
            assert (await collect(conn, "session.created"))[-1]["type"] == "session.created"
        wrong = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="guess")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with wrong.realtime.connect(model="gpt-realtime") as conn:
                await conn.recv_bytes()
        assert refused.value.response.status_code == 403


# --------------------------------------------------------------------------- real services
def reference(name: str) -> str:
    return next(m["text"] for m in speech_manifest() if m["file"] == name)


@pytest.fixture(scope="module")
def long_reply_app(services, tmp_path_factory):
    """main_app whose replies run long (an LLM without the sentence cap or the repetition guard), so a
    barge-in always finds the reply still being written and spoken."""
    with ServiceProcess(
        "rvchat_llm", "LLM_", {"LLM_PROVIDER": "local", "LLM_MAX_SENTENCES": "0", "LLM_GUARD": "false"}
    ) as llm:
        env = app_env(
            {**services, "llm": llm},
            tmp_path_factory.mktemp("rt") / "rt.sqlite3",
            APP_MAX_REPLY_SENTENCES="0",
            APP_MAX_TOKENS="400",
        )
        with ServiceProcess("rvchat_app", "APP_", env) as app:
            yield app


async def test_voice_turn_with_server_vad(app_service):
    """A real recording at real time, at 24 kHz: speech start and stop, its transcript, a spoken reply."""
    speech = to_24k(load_pcm16(speech_sample(CLIP)))
    silence = bytes(rt.SAMPLE_RATE * 2 * 2)  # 2 s: the turn ends within it
    async with client_for(app_service.url).realtime.connect(model="gpt-realtime") as conn:
        events = await collect(conn, "session.created")
        server_vad = {
            "type": "server_vad",
            "threshold": 0.5,
            "silence_duration_ms": 500,
            "prefix_padding_ms": 300,
        }
        await conn.send(session_update(audio={"input": {"turn_detection": server_vad}}))
        await collect(conn, "session.updated", seen=events)
        await stream_audio(conn, speech + silence)
        await collect(conn, "response.done", seen=events)
        # While the client is there: one that leaves before the audio has played keeps only what it heard.
        done = of(events, "response.done")[0]["response"]
        messages = history(app_service.url, done["conversation_id"])
    check_shapes(events)
    order = types(events)
    for kind in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.output_item.done",
        "rate_limits.updated",
        "response.done",
    ):
        assert kind in order, kind
    assert (
        order.index("input_audio_buffer.speech_started")
        < order.index("input_audio_buffer.speech_stopped")
        < order.index("input_audio_buffer.committed")
        < order.index("response.output_audio.delta")
        < order.index("response.done")
    )
    started = of(events, "input_audio_buffer.speech_started")[0]
    stopped = of(events, "input_audio_buffer.speech_stopped")[0]
    assert started["item_id"] == stopped["item_id"]
    # The recording's speech runs from about 0.3 s to its end (~4.9 s).
    assert 0 <= started["audio_start_ms"] < 1500 and stopped["audio_end_ms"] > 3000
    transcript = of(events, "conversation.item.input_audio_transcription.completed")[0]
    assert transcript["item_id"] == started["item_id"]
    assert wer(reference(CLIP), transcript["transcript"]) <= 0.2, transcript["transcript"]
    pcm = audio_of(events)
    audio = np.frombuffer(pcm, "<i2").astype(np.float32)
    assert audio.size > rt.SAMPLE_RATE * 0.3 and np.sqrt(np.mean(audio**2)) > 300  # speech, not silence
    said = "".join(e["delta"] for e in of(events, "response.output_audio_transcript.delta")).strip()
    assert said and done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"].strip() == said
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", transcript["transcript"]),
        ("assistant", said),
    ]


async def test_push_to_talk_and_audio_item(app_service):
    """turn_detection null: the client commits the buffer itself, and asks for the response."""
    speech = to_24k(load_pcm16(speech_sample(CLIP)))
    async with client_for(app_service.url).realtime.connect(model="gpt-realtime") as conn:
        events = await collect(conn, "session.created")
        await conn.send(session_update(output_modalities=["text"], audio={"input": {"turn_detection": None}}))
        await collect(conn, "session.updated", seen=events)
        await stream_audio(conn, speech, realtime=False)
        await conn.send({"type": "input_audio_buffer.commit"})
        await conn.send({"type": "response.create"})
        await collect(conn, "response.done", seen=events)
    check_shapes(events)
    order = types(events)
    assert "input_audio_buffer.speech_started" not in order  # no VAD in push to talk
    committed = of(events, "input_audio_buffer.committed")[0]
    transcript = of(events, "conversation.item.input_audio_transcription.completed")[0]
    assert transcript["item_id"] == committed["item_id"]
    assert wer(reference(CLIP), transcript["transcript"]) <= 0.2, transcript["transcript"]
    done = of(events, "response.done")[0]["response"]
    assert done["status"] == "completed" and done["output_modalities"] == ["text"]
    text = of(events, "response.output_text.done")[0]["text"]
    assert [(m["role"], m["content"]) for m in history(app_service.url, done["conversation_id"])] == [
        ("user", transcript["transcript"]),
        ("assistant", text.strip()),
    ]


async def test_barge_in_cancels_the_response_and_truncate_trims_the_history(long_reply_app):
    speech = to_24k(load_pcm16(speech_sample(CLIP)))
    async with client_for(long_reply_app.url).realtime.connect(model="gpt-realtime") as conn:
        events = await collect(conn, "session.created")
        await conn.send(user_text("Tell me a long story about a dragon and a knight."))
        await conn.send({"type": "response.create"})
        first = await collect(conn, "response.output_audio.delta", seen=events)
        response_id = first[-1]["response_id"]
        item_id = first[-1]["item_id"]
        # The user talks over the reply (a client plays audio as it comes: about 1 s in by now).
        talk = asyncio.create_task(stream_audio(conn, bytes(rt.SAMPLE_RATE * 2) + speech))
        await collect(conn, "input_audio_buffer.speech_started", seen=events)
        mine = [
            e
            for e in events
            if e.get("response_id") == response_id
            or (e["type"] == "response.done" and e["response"]["id"] == response_id)
        ]
        audio_ms = sum(
            len(base64.b64decode(e["delta"])) for e in of(mine, "response.output_audio.delta")
        ) // (rt.SAMPLE_RATE * 2 // 1000)
        played = min(audio_ms, 1200)
        await conn.send(truncate(item_id, played))
        while not any(e["type"] == "response.done" and e["response"]["id"] == response_id for e in events):
            await collect(conn, "response.done", seen=events)
        await collect(conn, "conversation.item.truncated", seen=events)
        await talk
    check_shapes(events)
    done = next(e for e in events if e["type"] == "response.done" and e["response"]["id"] == response_id)
    assert done["response"]["status"] == "cancelled"
    # Cancelled by the speech itself (before the client's truncate), as the user started talking.
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert events.index(done) < types(events).index("input_audio_buffer.speech_started")
    full = done["response"]["output"][0]["content"][0]["transcript"].strip()
    truncated = of(events, "conversation.item.truncated")[0]
    assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == played
    messages = history(long_reply_app.url, done["response"]["conversation_id"])
    assistant = next(m for m in messages if m["role"] == "assistant")
    # What was heard of the first 1.2 s: a few words, a strict beginning of what had been written.
    assert assistant["interrupted"] and assistant["content"]
    # The heard text joins the spoken segments by one space; the written one may break lines between them.
    heard, written = " ".join(assistant["content"].split()), " ".join(full.split())
    assert written.startswith(heard.rstrip(".,")) and len(heard) < len(written)
    assert len(assistant["content"].split()) <= 8
