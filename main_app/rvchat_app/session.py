"""One browser tab's voice session: the pipeline, read top-down.

    mic PCM ─► recognition (VAD + STT + endpointing) ─► reply (LLM ─► TTS) ─► playout ─► page
                       └─── speech start = pause; its words: resume or barge-in ◄──┘
                                                           history ◄── what was heard

The session wires the parts together and owns only what spans them: dispatching page events,
the current reply, and the state shown to the page, derived in one place (:meth:`Session.state`)
from whether the user speaks, a transcript is awaited, and the reply's phase and playout.
Speech that starts while the assistant is thinking or speaking pauses playback in the page at once
(the reply's generation goes on). Once STT's words for it are in, an acknowledgement ("mm-hm",
backchannel.py) or no words at all (a cough, a door) resume it where it stopped; other words are a
barge-in: playback stops, the LLM and TTS work is cancelled upstream, only what the user heard is
kept, and the new words are answered. With ``APP_BACKCHANNELS=false`` speech is a barge-in at once.

The service streams come from injectable factories, so the logic runs against fakes in unit
tests and against the real services in integration tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rvchat_common.protocol import ErrorEvent, ProtocolError, llm, page, parse, tts, vad

from .backchannel import Backchannels, parse_words, same_words, words_after
from .clients import Closed, ServiceClosed
from .history import History, history_for_request
from .links import LABELS, Link, Links, StreamFactory
from .playout import Playout
from .recognition import TurnDetector
from .reply import DEFAULT_TTS_RATE, ENDED, DirectUpstream, Phase, Reply, ReplyFailed, ReplyStream
from .settings import Settings
from .store import Store
from .tools import Hooks, Result, Toolbox, answer_calls

log = logging.getLogger("rvchat.app.session")

# The page's transport: an event model (sent as a JSON text frame) or PCM bytes (a binary frame).
Send = Callable[[page.Event | bytes], Awaitable[None]]
Observe = Callable[[str, float], None]
REPORT_WAIT_S = 0.4  # how long an interruption waits for the page to say how much it played
# Speech onset over a reply pauses it after this many 32 ms VAD chunks above the threshold, before the
# VAD confirms speech (after its minimum speech, 200 ms). bench/results/backchannel.md: onset to pause
# was 225-593 ms (median 255, 3 of 10 over 300 ms) on the VAD's speech start, 83-245 ms (median 122,
# 18 of 18 within 300 ms) after 3 chunks. A sound that the VAD then does not confirm as speech (a knock)
# resumes the reply PAUSE_CONFIRM_S after the minimum speech.
EARLY_PAUSE_CHUNKS = 3
PAUSE_CONFIRM_S = 0.25
LOUD_RECENT_S = 0.15  # a chunk above the VAD's threshold this recently: the sound goes on
# The resume window waits on while STT has the speech's words in hand, up to this many windows: with the
# soak bench on the same 2 CPUs, a real 4.6 s utterance (mfa_her.wav) over a reply got no words within
# 1.5 s of its end; the reply played on, to be cut off again when they came.
STT_GRACE = 3
# Events that end a request on the LLM or TTS link (it is idle again after them).
TERMINAL = (llm.Done, llm.Cancelled, tts.Done, tts.Cancelled, ErrorEvent, Closed)


class Session:
    """One browser tab: its mic stream, its service connections and its conversation."""

    def __init__(self, *, send: Send, store: Store, settings: Settings,
                 factories: dict[str, StreamFactory], observe: Observe | None = None,
                 conversation_id: str | None = None, toolbox: Toolbox | None = None) -> None:
        self._send_raw = send
        self.settings = settings
        self.tools = toolbox  # None: this session's replies call no tools (a Realtime client brings its own)
        self.observe = observe or (lambda stage, seconds: None)
        self.history = History(store, settings.history_messages, conversation_id)
        self.links = Links(factories, self._on_service_event, self._on_link_status)
        self.detector = TurnDetector(settings, self.links, hooks=self)
        self.voice_out = True
        self.reply: Reply | None = None
        self._recent: dict[int, Reply] = {}  # the last few replies by turn id (late playback reports)
        self._turn_ids = 0
        self._shown_state = "listening"
        self._tasks: set[asyncio.Task] = set()
        self._send_lock = asyncio.Lock()
        self._drain_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._closing: asyncio.Future | None = None
        # Backchannels: the page's settings, and the reply paused by speech until that speech's words are in.
        self.backchannel = {"backchannels": settings.backchannels,
                            "backchannel_words": parse_words(settings.backchannel_words),
                            "resume_window_ms": settings.resume_window_ms}
        self._acks = Backchannels(self.backchannel["backchannel_words"])
        self._paused: Reply | None = None
        self._resume_timer: asyncio.TimerHandle | None = None
        self._loud_chunks = 0  # consecutive VAD chunks above the threshold while a reply plays
        self._loud_at = 0.0  # when the VAD last heard a chunk above its threshold

    @property
    def conversation_id(self) -> str | None:
        return self.history.conversation_id

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.conversation_id and not await self.history.exists():
            await self.send(page.Notice(message="that conversation no longer exists; starting a new one"))
            await self.history.open(None)
        self.links.start()
        await self.send(self.hello())
        if self.conversation_id:
            await self._send_conversation()

    def hello(self) -> page.Hello:
        return page.Hello(conversation_id=self.conversation_id, state=self.state,
                          config=self._config_view().model_dump(exclude={"type"}), services=self.services_view())

    async def close(self) -> None:
        """End the session: record what the page heard, stop upstream work, close the links.

        Idempotent, and every caller waits for the one close: the page's socket handler and the app's
        shutdown both close a session, and the store must not be closed under its last write."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._closed = True
        reply = self.reply
        if reply is not None and (not reply.ended or reply.playout.playing(time.perf_counter())):
            # The page is gone: what it had not played yet was not heard.
            await self._interrupt(reason="session closed", notify=False)
        for task in list(self._tasks):
            task.cancel()
        if self._drain_timer:
            self._drain_timer.cancel()
        self._cancel_resume_timer()
        self.detector.close()
        await self.links.close()

    def _spawn(self, coro: Awaitable, name: str = "") -> asyncio.Task:
        task = asyncio.create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session task failed", exc_info=task.exception())

    # ----------------------------------------------------------------- to the page
    async def send(self, event: page.Event | bytes) -> None:
        if self._closed:
            return
        if isinstance(event, (page.StopPlayback, page.PausePlayback, page.ResumePlayback)):
            self.detector.on_playback(event.type, time.perf_counter())  # the echo guard's reference
        async with self._send_lock:  # a JSON audio header and its binary frame must stay adjacent
            try:
                await self._send_raw(event)
            except Exception:
                self._closed = True

    async def _send_audio(self, header: page.Audio, pcm: bytes) -> None:
        if self._closed:
            return
        async with self._send_lock:
            try:
                await self._send_raw(header)
                await self._send_raw(pcm)
            except Exception:
                self._closed = True
        self.detector.on_reply_audio(pcm, header.sample_rate, time.perf_counter())  # the echo guard's reference

    async def notify(self, event: page.Event) -> None:
        await self.send(event)
        if self._paused is not None:
            if isinstance(event, page.SpeechEnded):  # no words by the end of the window: it was not a turn
                self._start_resume_timer(self._paused)
            elif isinstance(event, page.NoSpeech):  # STT heard no words in it: a cough, a door, a breath
                await self._resume(self._paused, "no_words")

    async def _event_error(self, message: str, code: str) -> None:
        await self.send(page.SessionError.of(code, message))

    # ----------------------------------------------------------------- the state, derived
    @property
    def state(self) -> str:
        """What the page shows: listening, user_speaking, thinking or speaking."""
        if self.detector.user_speaking:
            return "user_speaking"
        reply = self.reply
        if reply is not None and reply.phase not in (Phase.FAILED, Phase.INTERRUPTED):
            playout = reply.playout
            if playout.started and not playout.page_done and not playout.paused and (
                    not reply.ended or time.perf_counter() < playout.drained_at()):
                return "speaking"
            if not reply.ended:
                return "thinking"
        return "thinking" if self.detector.awaiting_final else "listening"

    async def _sync_state(self) -> None:
        """Tell the page (and the VAD's barge-in threshold) when the derived state changes."""
        state = self.state
        if state == self._shown_state:
            return
        self._shown_state = state
        await self.send(page.State(state=state))
        await self.detector.set_agent_speaking(state == "speaking")

    def _sync_state_at(self, when: float) -> None:
        """Re-derive the state once the page has drained its audio."""
        if self._drain_timer:
            self._drain_timer.cancel()
        delay = max(0.0, when - time.perf_counter())
        self._drain_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._sync_state(), "drain"))

    async def on_user_state(self) -> None:
        await self._sync_state()

    # ----------------------------------------------------------------- services
    def services_view(self) -> dict:
        return self.links.view()

    async def _on_link_status(self, link: Link) -> None:
        await self.detector.on_link_status(link)
        if link.name == "tts" and link.up:
            await self.send(page.AudioFormat(sample_rate=int(link.ready.get("sample_rate") or DEFAULT_TTS_RATE)))
        await self.send(page.Services(**self.services_view()))

    async def _on_service_event(self, name: str, event: Any) -> None:
        if name == "vad":
            if isinstance(event, vad.Probability):
                await self._on_speech_probability(event.probability)
            await self.detector.on_vad(event)
        elif name == "stt":
            await self.detector.on_stt(event)
        else:
            if isinstance(event, TERMINAL):
                self.links[name].idle.set()
            reply = self.reply
            if reply is not None and not reply.ended and reply.stream is not None:
                reply.stream.put(name, event)
            elif isinstance(event, ErrorEvent):
                log.info("%s error outside a turn: %s", name, event.error.message)

    # ----------------------------------------------------------------- mic input
    async def on_audio(self, pcm: bytes) -> None:
        await self.detector.on_audio(pcm)

    # ----------------------------------------------------------------- turn detection hooks
    async def on_start_of_speech(self) -> None:
        reply = self.reply
        if self._paused is not None:
            self._cancel_resume_timer()  # more speech: its words decide too
            return
        if reply is not None and not reply.ended or self.state in ("thinking", "speaking"):
            if self._pausable(reply):
                await self._pause(reply)
            else:
                await self._interrupt(reason="barge-in")
        else:
            # The user starts a turn: the LLM evaluates the history's new end (the last reply as stored, the
            # user's header; the system prompt on a first turn) while they speak, not after.
            self._prefill("")

    def speculating(self) -> bool:
        reply = self.reply
        return reply is not None and reply.phase is Phase.SPECULATIVE and not reply.suspended

    async def on_turn_end_hold(self, commit_at: float) -> None:
        reply = self.reply
        if reply is None or reply.phase is not Phase.SPECULATIVE:
            return  # committed already (the answer came after its hold) or dropped
        reply.commit_at = commit_at
        if not reply.suspended:
            self._spawn(self._commit_after(reply, commit_at - time.perf_counter()), f"commit-{reply.id}")

    async def on_user_resumed(self) -> None:
        if self.reply is not None and self.reply.phase is Phase.SPECULATIVE:
            self._suspend(self.reply)

    def unheard_turn(self) -> str | None:
        paused = self._paused
        if paused is not None and paused.source == "voice" and not self._heard_before_pause(paused):
            return paused.user_text
        return None

    async def on_end_of_turn(self, text: str, timings: dict[str, float], commit_at: float | None,
                             replaces: int | None, continues: bool = False) -> None:
        paused = self._paused
        last = paused if paused is not None else self.reply
        if continues and last is not None and last.source == "voice" \
                and last.phase not in (Phase.SPECULATIVE, Phase.INTERRUPTED):
            # The words of the reply's turn were decoded again with this speech (nothing of the reply had been
            # heard when it was paused for it): what was said after them decides. (A stopped reply cannot play
            # on: its words were carried over, and the whole utterance is answered below.)
            added = words_after(text, last.user_text)
            if added is not None and (not added or self._acks.is_acknowledgement(added)):
                # Nothing but a breath or an "mm-hm" after them: the reply plays on.
                if paused is not None:
                    await self._resume(paused, "backchannel" if added else "no_words", added)
                return
            # More words (or the same ones heard differently with what followed): the user went on.
            log.info("turn %s: the user went on: %r", last.id, text[-40:])
            replaces = last.user_message_id  # the whole utterance, in the same stored message
            await self._interrupt(reason="barge-in", carry=False)
        elif paused is not None:
            if self._acks.is_acknowledgement(text):  # "mm-hm": heard, not a turn; the reply plays on
                await self._resume(paused, "backchannel", text)
                return
            # Real words over the reply: a barge-in after all.
            log.info("turn %s: words over the paused reply: %r", paused.id, text[:40])
            if not self._heard_before_pause(paused) and paused.source == "voice" and replaces is None:
                # Nothing of the reply reached the user's ears: they were only pausing. Answer the
                # whole utterance, in the same stored message. (Its first chunk may have reached the page
                # just before the pause; words are what count, as in what the history keeps.)
                text, replaces = f"{paused.user_text} {text}", paused.user_message_id
                await self._interrupt(reason="barge-in", carry=False)
            else:
                await self._interrupt(reason="barge-in")
        elif self.reply is not None and self.reply.phase is not Phase.SPECULATIVE and (
                not self.reply.ended or self.reply.playout.playing(time.perf_counter())):
            # Words that came after the paused reply resumed (their STT was slower than the window).
            await self._interrupt(reason="barge-in")
        reply = self.reply
        if reply is not None and reply.phase is Phase.SPECULATIVE and reply.suspended:
            if same_words(text, reply.user_text):
                # What sounded again had no words (a breath, a click, a cough): the reply prepared for
                # the words before it is still the answer. It goes out once its turn-end silence is over.
                reply.suspended = False
                log.info("turn %s: speculative reply resumed (no words after the pause)", reply.id)
                self._spawn(self._commit_after(reply, reply.commit_at - time.perf_counter()), f"commit-{reply.id}")
                await self._sync_state()
                return
            await self._drop_speculation(reply, carry=False)  # its words are in this turn's text
        await self._start_reply(text, source="voice", timings=timings, commit_at=commit_at, replaces=replaces)

    # ----------------------------------------------------------------- page events
    async def on_text_event(self, raw: str | dict) -> None:
        """One event from the page as JSON text or a dict; a bad one is answered with an error event."""
        try:
            event = parse(page.client_events, raw)
        except ProtocolError as exc:
            return await self.send(exc.event())
        await self.on_event(event)

    async def on_event(self, event: page.ClientEvent) -> None:
        """One (validated) event from the page."""
        if isinstance(event, page.Text):
            if self.reply is not None and not self.reply.ended or self.state == "speaking" or self._paused:
                await self._interrupt(reason="new message")
            self.detector.clear_carry()
            voice = self.voice_out if event.voice is None else event.voice
            await self._start_reply(event.text.strip(), source="text", timings={"transcript": time.perf_counter()},
                                    voice=voice)
        elif isinstance(event, page.Config):
            if event.voice_out is not None:
                self.voice_out = event.voice_out
            await self.detector.configure(event.changes())
            self.backchannel.update(event.backchannel_changes())
            self._acks = Backchannels(self.backchannel["backchannel_words"])
            await self.send(self._config_view())
        elif isinstance(event, page.Playback):
            self._on_playback(event)
        elif isinstance(event, page.Interrupt):
            await self._interrupt(reason="stopped by the user")
        elif isinstance(event, page.NewConversation):
            await self._interrupt(reason="new conversation")
            await self.history.open(None)
            self.detector.clear_carry()
            await self.send(page.Conversation(id=None, title="", messages=[]))
        elif isinstance(event, page.OpenConversation):
            if not await self.history.store.exists(event.id):
                return await self._event_error("no such conversation", "not_found")
            await self._interrupt(reason="conversation switched")
            await self.history.open(event.id)
            self.detector.clear_carry()
            await self._send_conversation()
        elif isinstance(event, page.Ping):
            await self.send(page.Pong(t=event.t))

    async def _send_conversation(self) -> None:
        conv = await self.history.conversation()
        if conv is None:
            return
        await self.send(page.Conversation(id=conv["id"], title=conv["title"], messages=conv["messages"]))

    def _config_view(self) -> page.ConfigApplied:
        return page.ConfigApplied(**self.detector.config, voice_out=self.voice_out, **self.backchannel,
                                  echo_guard=self.detector.echo is not None)

    def _on_playback(self, event: page.Playback) -> None:
        reply = self.reply if event.turn is None else self._recent.get(event.turn)
        if reply is None:
            return
        reply.playout.report(event.played_ms, done=event.done and reply.ended)
        if event.done:
            self._spawn(self._sync_state(), "playback-done")

    async def respond(self, voice: bool | None = None) -> None:
        """A reply to the conversation as it stands, with no new user message (the Realtime API's
        ``response.create`` after its own ``conversation.item.create``)."""
        await self._start_reply(None, source="api", timings={"transcript": time.perf_counter()}, voice=voice)

    async def announce(self, message: str) -> None:
        """A reminder that is due (the timer tool): a notice, then said as its own turn once the user and
        the assistant are quiet (at most 30 s later)."""
        await self.send(page.Notice(message=f"Reminder: {message}"))
        for _ in range(300):
            if self._closed or self.state == "listening":
                break
            await asyncio.sleep(0.1)
        if self._closed:
            return
        if self.reply is not None and not self.reply.ended:  # still busy: the notice and the history only
            await self.history.add_assistant(f"Reminder: {message}", source="reminder")
            return
        await self._start_reply(None, source="reminder", timings={"transcript": time.perf_counter()},
                                say=f"Reminder: {message.rstrip('.!')}.")

    async def _remind(self, seconds: float, message: str) -> None:
        """Set a reminder: said in this session if it is still open when due, else kept in the
        conversation's history (shown when it is opened again)."""
        assert self.tools is not None
        cid = self.conversation_id
        store = self.history.store

        async def deliver() -> None:
            if not self._closed:
                await self.announce(message)
            elif cid is not None:
                await store.add_message(cid, "assistant", f"Reminder: {message}", source="reminder",
                                        meta={"reminder": True})

        self.tools.reminders.add(seconds, deliver)

    def _tool_hooks(self, reply: Reply) -> Hooks:
        async def on_call(call: llm.ToolCall) -> None:
            await reply.committed.wait()  # a speculative reply acts (sets a timer, posts a webhook) once it is the turn
            await reply.playout.emit(page.ToolCall(turn=reply.id, id=call.id, name=call.function.name,
                                                   arguments=_arguments(call)))

        async def on_result(call: llm.ToolCall, result: Result) -> None:
            await reply.playout.emit(page.ToolResult(turn=reply.id, id=call.id, name=call.function.name,
                                                     ok=result.ok, result=result.content[:300]))

        async def remember(messages: list[dict]) -> None:
            await self.history.add_tool_messages(messages, "voice" if reply.voice else "text")

        return Hooks(on_call=on_call, on_result=on_result, remember=remember, remind=self._remind)

    # ----------------------------------------------------------------- replies
    async def _start_reply(self, text: str | None, *, source: str, timings: dict[str, float],
                           voice: bool | None = None, commit_at: float | None = None,
                           replaces: int | None = None, say: str | None = None) -> None:
        old = self.reply
        if old is not None and old.phase is Phase.SPECULATIVE:
            await self._drop_speculation(old, carry=False)
        cid, created = await self.history.ensure()
        if created:
            await self.send(page.ConversationCreated(id=cid))
        user_mid = await self.history.add_user(text, source, replaces=replaces) if text is not None else None
        self._turn_ids += 1
        turn = self._turn_ids
        llm, tts = self.links.get("llm"), self.links.get("tts")
        want_voice = self.voice_out if voice is None else voice
        playout = Playout(turn, self.send, self._send_audio, on_first_audio=self._first_audio_cb(turn),
                          on_chunk_sent=lambda: self._save_progress(turn))
        reply = Reply(id=turn, user_text=text or "", source=source, voice=bool(want_voice and tts is not None and tts.up),
                      user_message_id=user_mid, playout=playout, t=dict(timings), say=say)
        if llm is not None:
            reply.stream = ReplyStream(llm, tts, _PageSink(self, reply), voice=reply.voice,
                                       max_sentences=self.settings.max_reply_sentences,
                                       timeout_s=self.settings.turn_timeout_s, timings=reply.t)
        self.reply = reply
        self._recent[turn] = reply
        for old in [k for k in self._recent if k <= turn - 4]:
            del self._recent[old]
        delay = (commit_at - time.perf_counter()) if commit_at is not None else 0.0
        if delay > 0:
            reply.phase = Phase.SPECULATIVE
            reply.commit_at = commit_at or 0.0
            playout.hold()
            self._spawn(self._commit_after(reply, delay), f"commit-{turn}")
        else:
            reply.committed.set()
        if text is not None:
            await playout.emit(page.Transcript(turn=turn, text=text, source=source, message_id=user_mid))
        await self._sync_state()
        reply.task = self._spawn(self._run_reply(reply), f"turn-{turn}")

    def _llm_options(self) -> dict[str, Any]:
        s = self.settings
        return {"system": s.system_prompt, "max_tokens": s.max_tokens, "temperature": s.temperature,
                "model": s.llm_model}

    async def on_partial(self, text: str) -> None:
        self._prefill(text)

    def _prefill(self, words: str) -> None:
        """Have the LLM evaluate the prompt of the reply to come with the user's ``words`` so far (none yet at
        the start of speech, a partial transcript later), so that the reply's generation evaluates only the
        words after them (APP_LLM_PREFILL). Not while a reply is under way: its words would change the
        history the prompt starts with."""
        llm = self.links.get("llm")
        if not self.settings.llm_prefill or llm is None or not llm.up or not llm.idle.is_set() \
                or (self.reply is not None and self.reply.phase not in ENDED):
            return

        async def prefill() -> None:
            messages = await self.history.context(pending=words)
            choice = self.tools.choose(words) if self.tools is not None and words else {}
            await llm.call("prefill", messages, **{**self._llm_options(), **choice})

        self._spawn(prefill(), "prefill")

    def _first_audio_cb(self, turn: int) -> Callable[[float], Awaitable[None]]:
        async def first_audio(at: float) -> None:
            reply = self._recent.get(turn)
            if reply is not None:
                reply.t["first_audio"] = at
            await self._sync_state()
        return first_audio

    async def _save_progress(self, turn: int, text: str | None = None) -> None:
        """Keep the reply's row current while it plays: what was sent so far, marked interrupted."""
        reply = self._recent.get(turn)
        if reply is None or reply.ended:
            return
        async with reply.save_lock:
            if reply.ended:
                return
            said = reply.playout.sent_text() if text is None else text
            if said:
                reply.message_id = await self.history.save_partial(
                    reply.message_id, said, source="voice" if reply.voice else "text")
                reply.saved_at = time.perf_counter()

    async def _commit_after(self, reply: Reply, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))
        if self.reply is not reply or reply.phase is not Phase.SPECULATIVE or reply.suspended:
            return
        if time.perf_counter() < reply.commit_at - 0.002:
            return  # its hold grew since (on_turn_end_hold): a later commit is waiting
        reply.t["commit"] = time.perf_counter()
        reply.phase = Phase.COMMITTED
        await reply.playout.release()
        reply.committed.set()

    async def _run_reply(self, reply: Reply) -> None:
        llm, tts = self.links.get("llm"), self.links.get("tts")
        try:
            if llm is not None and llm.starting:
                await llm.wait_up(3.0)  # a message typed the moment the page opened
            if llm is None or not llm.up or reply.stream is None:
                await self._fail(reply, "llm", "the language model service is unavailable: no reply "
                                 "can be made until it is back")
                return
            if not llm.idle.is_set() and not await llm.wait_idle(2.0):
                await llm.restart()
            messages = await self.history.context()
            if reply.voice and tts is not None and not tts.idle.is_set() and not await tts.wait_idle(2.0):
                await tts.restart()
            options = self._llm_options()
            if reply.say is not None:
                await reply.playout.emit(page.ReplyStart(turn=reply.id, voice=reply.voice))
                await reply.stream.speak(reply.say)
                await reply.stream.run()
                await self._finish(reply)
                return
            choice = self.tools.choose(reply.user_text) if self.tools is not None else {}
            if not await reply.stream.start(messages, **{**options, **choice}):
                await self._fail(reply, "llm", "the language model service connection was lost")
                return
            await reply.playout.emit(page.ReplyStart(turn=reply.id, voice=reply.voice))
            await reply.stream.run()
            if self.tools is not None:
                await answer_calls(reply.stream, self.tools, messages, options, reply.user_text,
                                   self._tool_hooks(reply))
            await self._finish(reply)
        except ReplyFailed as exc:
            await self._fail(reply, exc.source, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("turn %s failed", reply.id)
            await self._fail(reply, "app", f"the turn failed: {exc}")

    async def _fail(self, reply: Reply, source: str, message: str) -> None:
        if reply.ended:
            return
        await reply.committed.wait()  # a speculative reply fails visibly only once it is really the turn
        if reply.ended:
            return
        reply.phase = Phase.FAILED
        await self.send(page.SessionError.upstream(source, message, f"{source}_failed", turn=reply.id))
        text = reply.text.strip()
        async with reply.save_lock:
            if text or reply.message_id is not None:
                reply.message_id = await self.history.save_final(
                    reply.message_id, text, interrupted=True, source="voice" if reply.voice else "text",
                    meta={"error": message})
        await self.send(page.ReplyEnd(turn=reply.id, text=reply.text, error=True))
        await self._sync_state()

    async def _finish(self, reply: Reply) -> None:
        await reply.committed.wait()
        reply.phase = Phase.DONE
        latency = reply.latency()
        for stage, ms in latency.items():
            self.observe(stage, ms / 1000)
        text = reply.text.strip()
        async with reply.save_lock:
            if text:
                reply.message_id = await self.history.save_final(
                    reply.message_id, text, source="voice" if reply.spoken else "text",
                    meta={"latency": latency} if latency else None)
        playout = reply.playout
        if playout.chunks:
            await self.send(page.AudioEnd(turn=reply.id, chunks=len(playout.chunks),
                                          audio_ms=round(playout.audio_ms, 1)))
        if latency:
            await self.send(page.Latency(turn=reply.id, **latency))
        await self.send(page.ReplyEnd(turn=reply.id, text=text, message_id=reply.message_id, latency=latency))
        if playout.chunks:
            self._sync_state_at(playout.drained_at())  # speaking until the page has played it all
        await self._sync_state()

    def _suspend(self, reply: Reply) -> None:
        """Speech again during a speculative reply: hold it back (not dropped yet) until the words are in.

        If what sounded had words, the utterance goes on and the reply is dropped then; if it was a
        breath or a click, the reply goes out after all instead of being made again from scratch."""
        if reply.suspended:
            return
        reply.suspended = True
        # What the user says next may be the rest of this utterance.
        self.detector.carry_over(reply.user_text, reply.user_message_id)
        log.info("turn %s: speculative reply held back (speech again)", reply.id)

    async def _drop_speculation(self, reply: Reply, carry: bool = True) -> None:
        """Drop a reply started on a short pause that turned out not to end the turn; nothing reached the page.

        ``carry``: what the user says next is the rest of this utterance (not when its words are in already)."""
        reply.phase = Phase.INTERRUPTED
        if reply.task is not None and reply.task is not asyncio.current_task():
            reply.task.cancel()
        if reply.stream is not None:
            await reply.stream.cancel()
        if carry:
            self.detector.carry_over(reply.user_text, reply.user_message_id)
        log.info("turn %s: speculative reply dropped (the user went on)", reply.id)

    # ----------------------------------------------------------------- pause and resume (backchannels)
    async def _on_speech_probability(self, p: float) -> None:
        """Speech onset over the reply, before the VAD confirms it: pause at once (the sooner the better)."""
        reply = self.reply
        base = self.detector.config["threshold"]
        if p >= base:
            self._loud_at = time.perf_counter()
        if self._paused is not None or self.detector.user_speaking or not self._pausable(reply):
            self._loud_chunks = 0
            return
        threshold = max(self.settings.barge_in_threshold, base) if self._shown_state == "speaking" else base
        self._loud_chunks = self._loud_chunks + 1 if p >= threshold else 0
        if self._loud_chunks >= EARLY_PAUSE_CHUNKS and reply is not None:
            self._loud_chunks = 0
            await self._pause(reply)
            # Not confirmed as speech (a click, a knock): play on.
            self._start_resume_timer(reply, self.detector.config["min_speech_ms"] / 1000 + PAUSE_CONFIRM_S,
                                     "no_words")

    @staticmethod
    def _heard_before_pause(reply: Reply) -> bool:
        """Whether any word of ``reply`` played (by the play clock) before the page paused it."""
        playout = reply.playout
        if not playout.started:
            return False
        played = playout.estimated_played_ms(playout.paused_at or time.perf_counter())
        return bool(playout.heard(played, reply.text, reply.voice))

    def _pausable(self, reply: Reply | None) -> bool:
        """Speech over this reply pauses it (rather than interrupting it at once)."""
        return (self.backchannel["backchannels"] and reply is not None and reply.phase is not Phase.SPECULATIVE
                and (not reply.ended or reply.playout.playing(time.perf_counter())))

    async def _pause(self, reply: Reply) -> None:
        """Speech onset over the reply: stop the sound now, keep the rest until the speech's words are in."""
        self._paused = reply
        reply.playout.pause(time.perf_counter())
        await self.send(page.PausePlayback(turn=reply.id))
        log.info("turn %s: paused (speech over the reply)", reply.id)
        await self._sync_state()

    async def _resume(self, reply: Reply, reason: str, text: str = "") -> None:
        """A false interruption: play on from where the page paused."""
        if self._paused is not reply:
            return
        self._paused = None
        self._cancel_resume_timer()
        if reply.phase is Phase.INTERRUPTED:  # stopped in the page already
            return
        # A reply that failed while paused resumes too: what it had sent was said, and the page's player
        # would otherwise hold the next reply's audio behind the pause.
        paused_s = reply.playout.resume(time.perf_counter())
        await self.send(page.ResumePlayback(turn=reply.id, reason=reason, text=text,
                                            paused_ms=round(paused_s * 1000, 1)))
        log.info("turn %s: resumed after %.0f ms (%s%s)", reply.id, paused_s * 1000, reason,
                 f": {text!r}" if text else "")
        if reply.ended and reply.playout.chunks:
            self._sync_state_at(reply.playout.drained_at())
        await self._sync_state()

    def _start_resume_timer(self, reply: Reply, delay: float | None = None, reason: str = "timeout") -> None:
        self._cancel_resume_timer()
        if delay is None:
            delay = self.backchannel["resume_window_ms"] / 1000
        deadline = time.perf_counter() + delay * STT_GRACE

        def fire() -> None:
            now = time.perf_counter()
            # STT is still writing the speech's words (a loaded CPU): wait for them rather than play on
            # and cut the reply off again a moment later, up to STT_GRACE times the window.
            if reason == "timeout" and self.detector.awaiting_final and now < deadline:
                self._resume_timer = asyncio.get_running_loop().call_later(0.1, fire)
                return
            # Not confirmed as speech yet, but the mic is still loud: a word that dipped under the VAD's
            # threshold restarts its minimum speech (in a browser run, the rest of a sentence after a pause
            # was taken for a knock, and the reply played on over it). Wait while it lasts.
            if reason == "no_words" and now - self._loud_at < LOUD_RECENT_S and now < deadline:
                self._resume_timer = asyncio.get_running_loop().call_later(0.05, fire)
                return
            self._spawn(self._resume(reply, reason), f"resume-{reply.id}")

        self._resume_timer = asyncio.get_running_loop().call_later(delay, fire)

    def _cancel_resume_timer(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None

    async def _interrupt(self, reason: str, notify: bool = True, carry: bool = True) -> None:
        """Barge-in: stop playback now, cancel upstream work, keep only what was heard.

        ``carry``: if nothing of a voice reply was heard, what the user says next continues their
        utterance (not when the caller has merged the words already)."""
        reply = self.reply
        if reply is None or reply.phase is Phase.INTERRUPTED:
            return
        if self._paused is reply:
            self._paused = None
            self._cancel_resume_timer()
        if reply.phase is Phase.SPECULATIVE:
            if reason == "barge-in":  # the user's speech decides, once its words are in
                self._suspend(reply)
                return
            await self._drop_speculation(reply)
            await self._sync_state()
            return
        now = time.perf_counter()
        if reply.ended and not reply.playout.playing(now):
            return
        running = not reply.ended
        reply.phase = Phase.INTERRUPTED
        if notify:
            await self.send(page.StopPlayback(turn=reply.id, reason=reason))
        if running:
            if reply.task is not None and reply.task is not asyncio.current_task():
                reply.task.cancel()
            if reply.stream is not None:
                reply.cancelled = await reply.stream.cancel()
        # Whether the user's words after this were decided before the page's report is in (then they are a
        # turn of their own already, and carrying this reply's words over would join them to the next one).
        carry_for = self.detector.decisions if carry else None
        if notify:
            self._spawn(self._record_interrupted(reply, now, reason, notify, carry_for), f"interrupt-{reply.id}")
        else:  # the page is gone: record what it had heard (by the clock) before the session ends
            await self._record_interrupted(reply, now, reason, notify, carry_for)
        if reason != "barge-in":  # on a barge-in the user's speech sets the state next
            await self._sync_state()

    async def _record_interrupted(self, reply: Reply, at: float, reason: str, notify: bool,
                                  carry_for: int | None = None) -> None:
        """Keep what was heard of an interrupted reply. ``carry_for``: the detector's decision count when it
        was interrupted; if nothing was heard and no end of turn has been decided since, what the user says
        next continues their utterance."""
        # The page answers stop_playback with the audio it really played.
        played = await reply.playout.played_ms(at, REPORT_WAIT_S if notify else 0)
        heard = reply.playout.heard(played, reply.text, reply.voice)
        meta = {"full_text": reply.text.strip(), "played_ms": round(played, 1), "reason": reason,
                "cancelled": reply.cancelled}
        async with reply.save_lock:
            if reply.message_id is not None:
                await self.history.mark_interrupted(reply.message_id, heard, meta)
            elif heard:
                reply.message_id = await self.history.add_assistant(
                    heard, interrupted=True, source="voice" if reply.spoken else "text", meta=meta)
        if carry_for is not None and carry_for == self.detector.decisions and not heard \
                and reason == "barge-in" and reply.source == "voice":
            # Nothing of the reply was heard: the user was only pausing. Merge what they say next
            # into the same message, so the model answers the whole utterance.
            self.detector.carry_over(reply.user_text, reply.user_message_id)
        if notify:
            await self.send(page.Interrupted(turn=reply.id, spoken_text=heard, full_text=reply.text.strip(),
                                             cancelled=reply.cancelled, played_ms=round(played, 1),
                                             message_id=reply.message_id, reason=reason))
        log.info("turn %s interrupted (%s) after %.0f ms of audio", reply.id, reason, played)


def _arguments(call: llm.ToolCall) -> dict | str:
    try:
        args = json.loads(call.function.arguments or "{}")
    except ValueError:
        return call.function.arguments
    return args if isinstance(args, dict) else call.function.arguments


class _PageSink:
    """A voice session's reply output: text deltas and audio to the page, through the playout."""

    def __init__(self, session: Session, reply: Reply) -> None:
        self.session = session
        self.reply = reply

    async def on_text(self, delta: str) -> None:
        reply = self.reply
        await reply.playout.emit(page.ReplyDelta(turn=reply.id, text=delta))
        # A text reply is "said" as it is shown: keep its row current (at most twice a second).
        if not reply.voice and not reply.playout.holding and time.perf_counter() - reply.saved_at > 0.5:
            await self.session._save_progress(reply.id, reply.text.strip())

    async def on_audio(self, text: str, pcm: bytes, rate: int) -> None:
        await self.reply.playout.audio(text, pcm, rate)

    async def on_tts_lost(self, why: str) -> None:
        self.reply.voice = False
        await self.reply.playout.emit(page.SessionError.upstream(
            "tts", f"speech synthesis failed ({why}): the reply continues as text", "tts_failed",
            turn=self.reply.id))


class _Collect:
    """``POST /api/message``'s reply output: the text, and the audio as one buffer."""

    def __init__(self, rate: int) -> None:
        self.pcm = bytearray()
        self.rate = rate

    async def on_text(self, delta: str) -> None:
        pass

    async def on_audio(self, text: str, pcm: bytes, rate: int) -> None:
        self.pcm.extend(pcm)
        self.rate = rate

    async def on_tts_lost(self, why: str) -> None:
        from rvchat_common.errors import APIError

        raise APIError(502, f"speech synthesis failed: {why}", "tts_failed")


def _api_hooks(history: History, toolbox: Toolbox, calls: list[dict]) -> Hooks:
    """``POST /api/message``'s tool calls: listed in the answer, kept in the history; a reminder, with no
    page to say it, is written into the conversation when due."""
    cid = history.conversation_id

    async def on_call(call: llm.ToolCall) -> None:
        calls.append({"id": call.id, "name": call.function.name, "arguments": _arguments(call)})

    async def on_result(call: llm.ToolCall, result: Result) -> None:
        calls[-1].update(ok=result.ok, result=result.content)
        if result.arguments is not None and result.arguments != calls[-1]["arguments"]:
            # What the tool ran with (as the history keeps it); what the model wrote, when it differs, beside it:
            # for "What is 12 times 7?" the embedded model wrote text that is not JSON, and the sum came from the
            # user's words.
            calls[-1]["arguments_written"] = calls[-1]["arguments"]
            calls[-1]["arguments"] = result.arguments

    async def remember(messages: list[dict]) -> None:
        await history.add_tool_messages(messages, "api")

    async def remind(seconds: float, message: str) -> None:
        async def deliver() -> None:
            if cid is not None:
                await history.store.add_message(cid, "assistant", f"Reminder: {message}", source="reminder",
                                                meta={"reminder": True})
        toolbox.reminders.add(seconds, deliver)

    return Hooks(on_call=on_call, on_result=on_result, remember=remember, remind=remind)


async def reply_once(*, store: Store, settings: Settings, factories: dict[str, StreamFactory],
                     text: str, conversation_id: str | None, audio: bool, toolbox: Toolbox | None = None) -> dict:
    """A whole reply to one typed message (for ``POST /api/message``): text, and optionally WAV audio.

    Uses fresh LLM/TTS connections and the same :class:`ReplyStream` as a voice session.
    """
    from rvchat_common.audio import base64_audio
    from rvchat_common.errors import APIError

    history = await history_for_request(store, settings.history_messages, conversation_id)
    user_id = await history.add_user(text, "api")
    messages = await history.recent()
    upstreams: dict[str, DirectUpstream] = {}
    calls: list[dict] = []  # the tool calls made, for the answer
    try:
        for name in ("llm", "tts") if audio else ("llm",):
            stream = factories[name]()
            try:
                await stream.connect()
            except ServiceClosed as exc:
                await stream.close()
                raise APIError(503, f"the {LABELS[name]} service is unavailable: {exc.reason}",
                               f"{name}_unavailable") from None
            upstreams[name] = DirectUpstream(stream)
        tts = upstreams.get("tts")
        sink = _Collect(int(tts.ready.get("sample_rate") or 22050) if tts else 0)
        reply = ReplyStream(upstreams["llm"], tts, sink, voice=audio, max_sentences=settings.max_reply_sentences,
                            timeout_s=settings.turn_timeout_s)
        for upstream in upstreams.values():
            upstream.feed(reply)
        t0 = time.perf_counter()
        options = {"system": settings.system_prompt, "max_tokens": settings.max_tokens,
                   "temperature": settings.temperature, "model": settings.llm_model}
        choice = toolbox.choose(text) if toolbox is not None else {}
        if not await reply.start(messages, **{**options, **choice}):
            raise APIError(502, "the language model connection was lost", "llm_failed")
        try:
            await reply.run()
            if toolbox is not None:
                await answer_calls(reply, toolbox, messages, options, text, _api_hooks(
                    history, toolbox, calls))
            text_out = reply.text.strip()
        except ReplyFailed as exc:
            if exc.timeout:
                raise APIError(504, "the reply took too long", "timeout") from None
            if exc.error is not None and exc.error.type == "invalid_request_error":
                raise APIError(400, f"the {LABELS[exc.source]} refused the request: {exc.error.message}",
                               exc.error.code or "invalid_request_error", param=exc.error.param) from None
            raise APIError(502, exc.message, f"{exc.source}_failed") from None
    finally:
        for upstream in upstreams.values():
            await upstream.close()
    message_id = await history.add_assistant(text_out, source="api")
    out: dict[str, Any] = {"conversation_id": history.conversation_id, "text": text_out, "message_id": message_id,
                           "user_message_id": user_id, "elapsed_ms": round((time.perf_counter() - t0) * 1000)}
    if calls:
        out["tool_calls"] = calls
    if audio:
        out["audio"] = base64_audio(bytes(sink.pcm), sink.rate or 22050)
    return out
