// @ts-check
// What the page shows: the chat bubbles (each bubble of a turn carries its turn id in data-turn), the state
// bar and level meter, the latency panel, the turn-taking sliders, the services list, the conversation
// list and the banner. It reads no socket and plays no audio; app.js calls it.

/** @typedef {import("./protocol.js").UiState} UiState */
/** @typedef {import("./protocol.js").PageConfig} PageConfig */
/** @typedef {import("./protocol.js").SessionConfig} SessionConfig */
/** @typedef {import("./protocol.js").TurnTaking} TurnTaking */
/** @typedef {import("./protocol.js").ServicesView} ServicesView */
/** @typedef {import("./protocol.js").StoredMessage} StoredMessage */
/** @typedef {import("./protocol.js").ConversationSummary} ConversationSummary */
/** @typedef {import("./protocol.js").TranscriptEvent} TranscriptEvent */
/** @typedef {import("./protocol.js").ReplyEndEvent} ReplyEndEvent */
/** @typedef {import("./protocol.js").InterruptedEvent} InterruptedEvent */
/** @typedef {import("./protocol.js").ToolCallEvent} ToolCallEvent */
/** @typedef {import("./protocol.js").ToolResultEvent} ToolResultEvent */
/** @typedef {import("./protocol.js").Latency} Latency */

/**
 * @template {HTMLElement} [T=HTMLElement]
 * @param {string} id
 * @returns {T}
 */
function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return /** @type {T} */ (el);
}

/** @param {string} id @returns {HTMLInputElement} */
const input = (id) => $(id);

const STATE_LABELS = { idle: "Not listening", listening: "Listening", user_speaking: "You are speaking",
  thinking: "Thinking…", speaking: "Assistant speaking" };

// ------------------------------------------------------------------ state bar, connection, banner

/**
 * @param {UiState} state  main_app's state
 * @param {boolean} micOn  "listening" with the mic off is shown as not listening
 */
export function showState(state, micOn) {
  const el = $("state");
  const shown = micOn || state !== "listening" ? state : "idle";
  el.dataset.state = shown;
  $("state-label").textContent = STATE_LABELS[shown] || state;
}

/** @param {boolean} on */
export function showMic(on) {
  $("mic").setAttribute("aria-pressed", String(on));
  $("mic-label").textContent = on ? "Listening — click to mute" : "Start talking";
  if (!on) showLevel(0);
}

/** @param {number} rms  of the last mic frame, 0..1 */
export function showLevel(rms) { $("meter-fill").style.width = `${Math.min(100, Math.sqrt(rms) * 180)}%`; }

/** @param {boolean} ok @param {string} text */
export function showConnection(ok, text) {
  const el = $("conn");
  el.dataset.ok = String(ok);
  el.textContent = text;
}

/** @param {string | null | undefined} text  nothing hides the banner */
export function showBanner(text) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

// ------------------------------------------------------------------ chat bubbles

/**
 * @param {"user" | "assistant" | "error" | "tool"} role
 * @param {string} text
 * @param {{cls?: string, meta?: string, turn?: number}} [opts]
 * @returns {HTMLElement}
 */
function addBubble(role, text, opts = {}) {
  const messages = $("messages");
  const empty = messages.querySelector(".empty");
  if (empty) empty.remove();
  const div = document.createElement("div");
  div.className = `msg ${role}` + (opts.cls ? ` ${opts.cls}` : "");
  if (opts.turn != null) div.dataset.turn = String(opts.turn);
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  div.appendChild(body);
  if (opts.meta) setMeta(div, opts.meta);
  messages.appendChild(div);
  scrollToEnd();
  return div;
}

function scrollToEnd() {
  const messages = $("messages");
  messages.scrollTop = messages.scrollHeight;
}

/** @param {HTMLElement} div @param {string} text */
function setMeta(div, text) {
  let m = div.querySelector(".meta");
  if (!m) { m = document.createElement("span"); m.className = "meta"; div.appendChild(m); }
  m.textContent = text;
}

/** @param {HTMLElement} div @returns {HTMLElement} */
const bodyOf = (div) => /** @type {HTMLElement} */ (div.querySelector(".body"));

/**
 * The bubble of `role` for `turn` (turn ids are unique within a connection, and the list is redrawn on each).
 * @param {"user" | "assistant"} role
 * @param {number} turn
 * @returns {HTMLElement | null}
 */
export function bubbleOf(role, turn) {
  const all = document.querySelectorAll(`#messages .msg.${role}[data-turn="${turn}"]`);
  return all.length ? /** @type {HTMLElement} */ (all[all.length - 1]) : null;
}

/** @param {number} ms @returns {string} */
const latencyMeta = (ms) => `${Math.round(ms)} ms to first audio`;

/** @param {StoredMessage[]} messages  a conversation's history, replacing what is shown */
export function renderMessages(messages) {
  const box = $("messages");
  box.innerHTML = "";
  if (!messages.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "Press “Start talking” and speak, or type a message.";
    box.appendChild(p);
  }
  for (const m of messages) {
    if (m.role === "tool") {  // a call and its result, as one line
      addBubble("tool", `${m.meta && m.meta.name ? m.meta.name : "tool"}: ${m.content}`);
      continue;
    }
    if (m.meta && m.meta.tool_calls && !m.content) continue;  // the call: shown with its result
    const total = m.meta && m.meta.latency && m.meta.latency.total_ms;
    addBubble(m.role, m.content, { meta: m.interrupted ? "interrupted" : total ? latencyMeta(total) : "" });
  }
}

/** @param {string} text  what STT has heard so far of the utterance in progress */
export function showPartial(text) {
  let p = /** @type {HTMLElement | null} */ (document.querySelector("#messages .msg.partial"));
  if (!p) p = addBubble("user", "", { cls: "partial" });
  bodyOf(p).textContent = text;
  scrollToEnd();
}

export function removePartial() { document.querySelector("#messages .msg.partial")?.remove(); }

/**
 * The user's message of a turn: it takes the place of the partial bubble, if there is one. A transcript of a
 * message already shown is the whole of an utterance the user went on with before any word of the reply to
 * its first part was heard (main_app stores it as that one message): it replaces that message, and the
 * unheard reply's bubble goes.
 * @param {TranscriptEvent} ev
 */
export function showTranscript(ev) {
  const meta = ev.source === "voice" ? "spoken" : "";
  const earlier = ev.message_id == null ? null : /** @type {HTMLElement | null} */ (
    document.querySelector(`#messages .msg.user:not(.partial)[data-message-id="${ev.message_id}"]`));
  if (earlier) {
    bubbleOf("assistant", Number(earlier.dataset.turn))?.remove();
    earlier.remove();
  }
  let div = /** @type {HTMLElement | null} */ (document.querySelector("#messages .msg.partial"));
  if (!div) {
    div = addBubble("user", ev.text, { meta, turn: ev.turn });
  } else {
    div.classList.remove("partial");
    div.dataset.turn = String(ev.turn);
    bodyOf(div).textContent = ev.text;
    if (meta) setMeta(div, meta);
  }
  if (ev.message_id != null) div.dataset.messageId = String(ev.message_id);
}

/**
 * The assistant's bubble of `turn`, made if it does not exist yet.
 * @param {number} turn
 * @returns {HTMLElement}
 */
export function replyBubble(turn) { return bubbleOf("assistant", turn) || addBubble("assistant", "", { turn }); }

/** @param {number} turn @param {string} text  the next piece of the reply */
export function appendReply(turn, text) {
  const body = bodyOf(replyBubble(turn));
  body.textContent = (body.textContent || "") + text;
  scrollToEnd();
}

/**
 * A tool call in the turn's bubble, above the reply's text: "⚙ calculate(…)" while it runs.
 * @param {ToolCallEvent} ev
 */
export function showToolCall(ev) {
  const div = replyBubble(ev.turn);
  const line = document.createElement("span");
  line.className = "tool running";
  line.dataset.call = ev.id;
  const args = typeof ev.arguments === "string" ? ev.arguments : Object.values(ev.arguments).join(", ");
  line.textContent = `⚙ ${ev.name}(${args.length > 60 ? args.slice(0, 60) + "…" : args})`;
  div.insertBefore(line, bodyOf(div));
  scrollToEnd();
}

/** @param {ToolResultEvent} ev */
export function showToolResult(ev) {
  const line = document.querySelector(`#messages .tool[data-call="${CSS.escape(ev.id)}"]`);
  if (!line) return;
  line.className = `tool ${ev.ok ? "ok" : "failed"}`;
  line.textContent = `⚙ ${ev.name}: ${ev.result.length > 120 ? ev.result.slice(0, 120) + "…" : ev.result}`;
}

/** @param {ReplyEndEvent} ev */
export function endReply(ev) {
  const div = bubbleOf("assistant", ev.turn);
  if (div && ev.latency && ev.latency.total_ms) setMeta(div, latencyMeta(ev.latency.total_ms));
}

/**
 * A reply cut short: its bubble keeps what was said and greys out the rest.
 * @param {InterruptedEvent} ev
 */
export function markInterrupted(ev) {
  const div = bubbleOf("assistant", ev.turn);
  if (!div) return;  // interrupted before any of it was shown
  const body = bodyOf(div);
  const full = body.textContent || ev.full_text || "";
  const said = ev.spoken_text || "";
  body.textContent = said;
  if (full.length > said.length) {
    const rest = document.createElement("span");
    rest.className = "unsaid";
    rest.textContent = (said ? " " : "") + full.slice(said.length).trim();
    body.appendChild(rest);
  }
  setMeta(div, "interrupted");
}

/** @param {string} text */
export function showError(text) { addBubble("error", text); }

// ------------------------------------------------------------------ latency panel

const LATENCY_ROWS = /** @type {const} */ ([["Silence wait (VAD)", "endpoint_ms"], ["Transcript (STT)", "stt_ms"],
  ["First token (LLM)", "llm_first_token_ms"], ["First audio (TTS)", "tts_first_audio_ms"],
  ["Speech end → first audio", "total_ms"]]);

/**
 * @param {Latency} last  the last turn's stages
 * @param {number | null} medianMs  over the voice turns so far (null: none yet)
 */
export function showLatency(last, medianMs) {
  if (last.total_ms != null && last.endpoint_ms != null) $("lat-last").textContent = `${Math.round(last.total_ms)} ms`;
  if (medianMs != null) $("lat-median").textContent = `${Math.round(medianMs)} ms`;
  const dl = $("breakdown");
  dl.innerHTML = "";
  for (const [label, key] of LATENCY_ROWS) {
    const v = last[key];
    if (v == null) continue;
    const dt = document.createElement("dt"); dt.textContent = label;
    const dd = document.createElement("dd"); dd.textContent = `${Math.round(v)} ms`;
    dl.append(dt, dd);
  }
}

// ------------------------------------------------------------------ services, conversations

/** @param {ServicesView} view */
export function showServices(view) {
  showBanner(view.notice);
  const ul = $("services");
  ul.innerHTML = "";
  for (const [name, s] of Object.entries(view.services)) {
    const li = document.createElement("li");
    li.className = s.up ? "up" : "down";
    li.textContent = `${name.toUpperCase()} — ${s.up ? "up" : `down (${s.reason || "unreachable"})`}`;
    ul.appendChild(li);
  }
}

/**
 * @param {ConversationSummary[]} conversations
 * @param {string | null} activeId
 * @param {{open: (id: string) => void, remove: (id: string) => void}} actions
 */
export function showConversations(conversations, activeId, actions) {
  const ul = $("conv-list");
  ul.innerHTML = "";
  for (const c of conversations) {
    const li = document.createElement("li");
    if (c.id === activeId) li.classList.add("active");
    const open = document.createElement("button");
    open.className = "open";
    open.type = "button";
    open.textContent = c.title || "New conversation";
    open.title = `${c.message_count} messages`;
    open.onclick = () => actions.open(c.id);
    const del = document.createElement("button");
    del.className = "del";
    del.type = "button";
    del.textContent = "✕";
    del.setAttribute("aria-label", `Delete conversation ${c.title || c.id}`);
    del.onclick = () => actions.remove(c.id);
    li.append(open, del);
    ul.appendChild(li);
  }
}

// ------------------------------------------------------------------ settings: sliders, toggles, text box

/** @typedef {keyof TurnTaking} Knob */
/** @type {Record<Knob, {id: string, show: (v: number) => string}>} */
const KNOBS = {
  threshold: { id: "thr", show: (v) => v.toFixed(2) },
  min_silence_ms: { id: "sil", show: (v) => `${v} ms` },
  min_speech_ms: { id: "minsp", show: (v) => `${v} ms` },
  resume_window_ms: { id: "resume", show: (v) => `${v} ms` },
};
const knobs = /** @type {Knob[]} */ (Object.keys(KNOBS));
/**
 * main_app's values shown last: re-applied when the ranges arrive (a slider would otherwise stay clamped to
 * its old range) and when a change could not be sent.
 * @type {Partial<SessionConfig>}
 */
const shown = {};

/**
 * Ranges of the sliders and the longest message, from GET /config; the sliders are usable from then on.
 * @param {PageConfig["limits"]} limits
 */
export function applyLimits(limits) {
  for (const key of knobs) {
    const el = input(KNOBS[key].id);
    el.min = String(limits[key].min);
    el.max = String(limits[key].max);
    el.step = String(limits[key].step);
    el.disabled = false;
    const v = shown[key];
    if (v != null) el.value = String(v);
  }
  input("text").maxLength = limits.text_chars;
}

/**
 * main_app's values as they are (a value off the slider's step grid is still shown exactly).
 * @param {Partial<SessionConfig>} cfg
 */
export function showConfig(cfg) {
  for (const key of knobs) {
    const v = cfg[key];
    if (v == null) continue;
    shown[key] = v;
    input(KNOBS[key].id).value = String(v);
    $(`${KNOBS[key].id}-out`).textContent = KNOBS[key].show(v);
  }
  if (cfg.voice_out != null) input("voice-out").checked = shown.voice_out = cfg.voice_out;
  if (cfg.backchannels != null) input("bc").checked = shown.backchannels = cfg.backchannels;
  if (cfg.backchannel_words != null) {
    shown.backchannel_words = cfg.backchannel_words;
    input("bc-words").value = cfg.backchannel_words.join(", ");
  }
}

/** Show main_app's values again (a change the user made did not reach it). */
export function revertConfig() { showConfig({ ...shown }); }

/**
 * Call `onChange` when the user lets go of a slider (with that one value), flips Voice replies or the
 * backchannel switch, or edits the acknowledgements.
 * @param {(change: Partial<SessionConfig>) => void} onChange
 */
export function onSettingsChange(onChange) {
  for (const key of knobs) {
    const { id, show } = KNOBS[key];
    const el = input(id);
    el.addEventListener("input", () => { $(`${id}-out`).textContent = show(Number(el.value)); });
    el.addEventListener("change", () => onChange({ [key]: Number(el.value) }));
  }
  const voice = input("voice-out");
  voice.addEventListener("change", () => onChange({ voice_out: voice.checked }));
  const bc = input("bc");
  bc.addEventListener("change", () => onChange({ backchannels: bc.checked }));
  const words = input("bc-words");
  words.addEventListener("change", () => {
    onChange({ backchannel_words: words.value.split(",").map((w) => w.trim()).filter(Boolean) });
  });
}

/** @returns {boolean} whether the user wants cue tones */
export const cuesOn = () => input("cues").checked;

/** @param {boolean} on */
export function setCues(on) { input("cues").checked = on; }

/**
 * Typed messages: `onSend` gets the trimmed text, and the box is cleared.
 * @param {(text: string) => void} onSend
 */
export function onComposerSubmit(onSend) {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const box = input("text");
    const text = box.value.trim();
    if (!text) return;
    onSend(text);
    box.value = "";
  });
}
