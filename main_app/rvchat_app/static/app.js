// Realtime Voice Chat page: mic -> WebSocket (PCM16 16 kHz), events + reply PCM back, gapless playback.
"use strict";

const $ = (id) => document.getElementById(id);
const STATE_LABELS = { idle: "Not listening", listening: "Listening", user_speaking: "You are speaking",
  thinking: "Thinking…", speaking: "Assistant speaking" };

// Exposed for tests and curious users: what the page has received and played.
const stats = window.rvchat = {
  connected: false, state: "idle", audioChunksReceived: 0, audioChunksPlayed: 0, playedMs: 0,
  transcripts: [], replies: [], latencies: [], events: [], conversationId: null, micStarted: false,
};

let cfg = null;
let ws = null;
let wsRetry = 0;
let conversationId = new URLSearchParams(location.search).get("c") || localStorage.getItem("rvchat.conversation") || null;
let audioCtx = null;
let micNode = null;
let micStream = null;
let micOn = false;
let playRate = 22050;
let nextPlayTime = 0;
let sources = [];          // {src, turn, start, dur}
let pendingAudio = null;   // header of the audio event whose binary frame comes next
let currentBubble = null;  // assistant message element being streamed
let currentTurn = null;
let lastTurnEnded = {};    // turn -> true when reply_end arrived
let uiState = "idle";

// ------------------------------------------------------------------ helpers
function setConversation(id) {
  conversationId = id;
  stats.conversationId = id;
  if (id) localStorage.setItem("rvchat.conversation", id); else localStorage.removeItem("rvchat.conversation");
  const url = new URL(location.href);
  if (id) url.searchParams.set("c", id); else url.searchParams.delete("c");
  history.replaceState(null, "", url);
  refreshConversations();
}

function send(obj) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); }

function setState(state) {
  uiState = state;
  stats.state = state;
  const el = $("state");
  el.dataset.state = micOn || state !== "listening" ? state : "idle";
  $("state-label").textContent = STATE_LABELS[el.dataset.state] || state;
}

function addMessage(role, text, opts = {}) {
  const empty = document.querySelector(".messages .empty");
  if (empty) empty.remove();
  const div = document.createElement("div");
  div.className = `msg ${role}` + (opts.cls ? ` ${opts.cls}` : "");
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  div.appendChild(body);
  if (opts.meta) {
    const m = document.createElement("span");
    m.className = "meta";
    m.textContent = opts.meta;
    div.appendChild(m);
  }
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function setMeta(div, text) {
  let m = div.querySelector(".meta");
  if (!m) { m = document.createElement("span"); m.className = "meta"; div.appendChild(m); }
  m.textContent = text;
}

function renderMessages(messages) {
  $("messages").innerHTML = "";
  if (!messages.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "Press “Start talking” and speak, or type a message.";
    $("messages").appendChild(p);
  }
  for (const m of messages) {
    const meta = m.interrupted ? "interrupted" : (m.meta && m.meta.latency && m.meta.latency.total_ms
      ? `${Math.round(m.meta.latency.total_ms)} ms to first audio` : "");
    addMessage(m.role, m.content, { meta });
  }
}

function median(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function showBanner(text) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

// ------------------------------------------------------------------ cue tones
function cue(freq, ms = 90) {
  if (!$("cues").checked || !audioCtx) return;
  const osc = audioCtx.createOscillator();
  const gain = audioCtx.createGain();
  osc.frequency.value = freq;
  gain.gain.setValueAtTime(0.0001, audioCtx.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.08, audioCtx.currentTime + 0.01);
  gain.gain.exponentialRampToValueAtTime(0.0001, audioCtx.currentTime + ms / 1000);
  osc.connect(gain).connect(audioCtx.destination);
  osc.start();
  osc.stop(audioCtx.currentTime + ms / 1000 + 0.02);
}

// ------------------------------------------------------------------ audio out
function ensureAudio() {
  if (!audioCtx) audioCtx = new (window.AudioContext || window.webkitAudioContext)({ latencyHint: "interactive" });
  if (audioCtx.state === "suspended") audioCtx.resume();
  return audioCtx;
}

function playChunk(header, buf) {
  const ctx = ensureAudio();
  const pcm = new Int16Array(buf);
  if (!pcm.length) return;
  const rate = header.sample_rate || playRate;
  const ab = ctx.createBuffer(1, pcm.length, rate);
  const ch = ab.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = ctx.createBufferSource();
  src.buffer = ab;
  src.connect(ctx.destination);
  // Back to back with what is already queued; a short lead when the queue is empty.
  const start = Math.max(ctx.currentTime + 0.03, nextPlayTime);
  nextPlayTime = start + ab.duration;
  const entry = { src, turn: header.turn, start, dur: ab.duration, done: false };
  sources.push(entry);
  src.onended = () => {
    if (entry.stopped) return;
    entry.done = true;
    stats.audioChunksPlayed++;
    stats.playedMs += entry.dur * 1000;
    notePlayed(entry);
    sources = sources.filter((s) => s !== entry);
    const remaining = sources.some((s) => s.turn === entry.turn);
    send({ type: "playback", turn: entry.turn, played_ms: Math.round(playedMsOf(entry.turn)), done: !remaining && !!lastTurnEnded[entry.turn] });
  };
  src.start(start);
  stats.audioChunksReceived++;
}

const playedByTurn = {};
function playedMsOf(turn) {
  const now = audioCtx ? audioCtx.currentTime : 0;
  let ms = playedByTurn[turn] || 0;
  for (const s of sources) {
    if (s.turn !== turn) continue;
    ms += Math.max(0, Math.min(now - s.start, s.dur)) * 1000;
  }
  return ms;
}

function stopPlayback(turn) {
  const now = audioCtx ? audioCtx.currentTime : 0;
  let played = 0;
  for (const s of sources) {
    if (turn == null || s.turn === turn) played += Math.max(0, Math.min(now - s.start, s.dur)) * 1000;
    s.stopped = true;
    try { s.src.stop(); } catch (e) { /* already stopped */ }
  }
  played += playedByTurn[turn] || 0;
  sources = [];
  nextPlayTime = 0;
  return played;
}

// Fully played chunks are removed from `sources`; remember their time per turn.
function notePlayed(entry) { playedByTurn[entry.turn] = (playedByTurn[entry.turn] || 0) + entry.dur * 1000; }

// ------------------------------------------------------------------ mic in
async function startMic() {
  const ctx = ensureAudio();
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  await ctx.audioWorklet.addModule("/static/worklet.js");
  const srcNode = ctx.createMediaStreamSource(micStream);
  micNode = new AudioWorkletNode(ctx, "mic-processor");
  micNode.port.onmessage = (e) => {
    const { pcm, rms } = e.data;
    $("meter-fill").style.width = `${Math.min(100, Math.sqrt(rms) * 180)}%`;
    if (micOn && ws && ws.readyState === WebSocket.OPEN) ws.send(pcm);
  };
  srcNode.connect(micNode);
  // The worklet must be pulled by the graph; a muted gain keeps it running without echoing the mic.
  const sink = ctx.createGain();
  sink.gain.value = 0;
  micNode.connect(sink).connect(ctx.destination);
  micOn = true;
  stats.micStarted = true;
}

async function toggleMic() {
  const btn = $("mic");
  if (!micOn) {
    try {
      if (!micNode) await startMic(); else micOn = true;
    } catch (err) {
      showBanner(`Microphone unavailable (${err.message || err}). You can still type.`);
      return;
    }
  } else {
    micOn = false;
    $("meter-fill").style.width = "0";
  }
  btn.setAttribute("aria-pressed", String(micOn));
  $("mic-label").textContent = micOn ? "Listening — click to mute" : "Start talking";
  setState(uiState === "idle" ? "listening" : uiState);
}

// ------------------------------------------------------------------ websocket
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = conversationId ? `?conversation_id=${encodeURIComponent(conversationId)}` : "";
  ws = new WebSocket(`${proto}://${location.host}/ws${q}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    wsRetry = 0;
    stats.connected = true;
    $("conn").dataset.ok = "true";
    $("conn").textContent = "connected";
    sendConfig();
  };
  ws.onclose = () => {
    stats.connected = false;
    $("conn").dataset.ok = "false";
    const delay = Math.min(10000, 500 * 2 ** wsRetry++);
    $("conn").textContent = `reconnecting in ${Math.round(delay / 1000)} s…`;
    stopPlayback(null);
    setTimeout(connect, delay);
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") {
      if (pendingAudio) { playChunk(pendingAudio, e.data); pendingAudio = null; }
      return;
    }
    let ev;
    try { ev = JSON.parse(e.data); } catch { return; }
    handle(ev);
  };
}

function sendConfig() {
  send({ type: "config", threshold: Number($("thr").value), min_silence_ms: Number($("sil").value),
    min_speech_ms: Number($("minsp").value), voice_out: $("voice-out").checked });
}

function handle(ev) {
  stats.events.push(ev.type);
  if (stats.events.length > 500) stats.events.shift();
  switch (ev.type) {
    case "hello":
      setState(ev.state);
      applyServices(ev.services);
      if (!ev.conversation_id && conversationId) setConversation(null);
      if (!ev.conversation_id) renderMessages([]);
      break;
    case "conversation":
      setConversation(ev.id);
      renderMessages(ev.messages || []);
      break;
    case "conversation_created":
      setConversation(ev.id);
      break;
    case "services": applyServices(ev); break;
    case "audio_format": playRate = ev.sample_rate; break;
    case "state":
      if (ev.state === "thinking" && uiState === "user_speaking") cue(660);
      setState(ev.state);
      break;
    case "speech_start": removePartial(); break;
    case "partial": showPartial(ev.text); break;
    case "no_speech": removePartial(); break;
    case "transcript":
      removePartial();
      stats.transcripts.push(ev.text);
      addMessage("user", ev.text, { meta: ev.source === "voice" ? "spoken" : "" });
      break;
    case "reply_start":
      currentTurn = ev.turn;
      currentBubble = addMessage("assistant", "");
      break;
    case "reply_delta":
      if (!currentBubble || currentTurn !== ev.turn) { currentTurn = ev.turn; currentBubble = addMessage("assistant", ""); }
      currentBubble.querySelector(".body").textContent += ev.text;
      $("messages").scrollTop = $("messages").scrollHeight;
      break;
    case "audio": pendingAudio = ev; break;
    case "audio_end": break;
    case "reply_end":
      lastTurnEnded[ev.turn] = true;
      stats.replies.push(ev.text);
      if (currentBubble && ev.latency && ev.latency.total_ms) setMeta(currentBubble, `${Math.round(ev.latency.total_ms)} ms to first audio`);
      if (!sources.some((s) => s.turn === ev.turn)) send({ type: "playback", turn: ev.turn, played_ms: Math.round(playedMsOf(ev.turn)), done: true });
      currentBubble = null;
      break;
    case "latency": showLatency(ev); break;
    case "stop_playback": {
      const played = stopPlayback(ev.turn);
      send({ type: "playback", turn: ev.turn, played_ms: Math.round(played), stopped: true });
      break;
    }
    case "interrupted": markInterrupted(ev); break;
    case "config":
      $("thr").value = ev.threshold; $("sil").value = ev.min_silence_ms; $("minsp").value = ev.min_speech_ms;
      updateOutputs();
      break;
    case "error": {
      const msg = (ev.error && ev.error.message) || "error";
      addMessage("error", ev.source ? `${ev.source.toUpperCase()}: ${msg}` : msg, { cls: "" });
      break;
    }
    case "notice": addMessage("error", ev.message); break;
    default: break;
  }
}

function markInterrupted(ev) {
  const bubbles = document.querySelectorAll(".msg.assistant");
  const last = bubbles[bubbles.length - 1];
  if (!last) return;
  const body = last.querySelector(".body");
  const full = body.textContent;
  const said = ev.spoken_text || "";
  body.textContent = said;
  if (full.length > said.length) {
    const rest = document.createElement("span");
    rest.className = "unsaid";
    rest.textContent = (said ? " " : "") + full.slice(said.length).trim();
    body.appendChild(rest);
  }
  setMeta(last, "interrupted");
  if (currentTurn === ev.turn) currentBubble = null;
}

function showPartial(text) {
  let p = document.querySelector(".msg.partial");
  if (!p) p = addMessage("user", "", { cls: "partial" });
  p.querySelector(".body").textContent = text;
}
function removePartial() { const p = document.querySelector(".msg.partial"); if (p) p.remove(); }

function showLatency(ev) {
  stats.latencies.push(ev);
  if (ev.total_ms != null && ev.endpoint_ms != null) {
    const totals = stats.latencies.filter((l) => l.total_ms != null && l.endpoint_ms != null).map((l) => l.total_ms);
    $("lat-last").textContent = `${Math.round(ev.total_ms)} ms`;
    $("lat-median").textContent = `${Math.round(median(totals))} ms`;
  }
  const rows = [["Silence wait (VAD)", ev.endpoint_ms], ["Transcript (STT)", ev.stt_ms],
    ["First token (LLM)", ev.llm_first_token_ms], ["First audio (TTS)", ev.tts_first_audio_ms],
    ["Speech end → first audio", ev.total_ms]];
  const dl = $("breakdown");
  dl.innerHTML = "";
  for (const [k, v] of rows) {
    if (v == null) continue;
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = `${Math.round(v)} ms`;
    dl.append(dt, dd);
  }
}

function applyServices(view) {
  if (!view || !view.services) return;
  showBanner(view.notice);
  const ul = $("services");
  ul.innerHTML = "";
  for (const [name, s] of Object.entries(view.services)) {
    const li = document.createElement("li");
    li.className = s.up ? "up" : "down";
    li.textContent = `${name.toUpperCase()} — ${s.up ? "up" : `down (${s.reason || "unreachable"})`}`;
    ul.appendChild(li);
  }
  stats.services = view;
}

// ------------------------------------------------------------------ conversations (REST)
async function refreshConversations() {
  try {
    const r = await fetch("/api/conversations");
    const { conversations } = await r.json();
    const ul = $("conv-list");
    ul.innerHTML = "";
    for (const c of conversations) {
      const li = document.createElement("li");
      if (c.id === conversationId) li.classList.add("active");
      const open = document.createElement("button");
      open.className = "open";
      open.type = "button";
      open.textContent = c.title || "New conversation";
      open.title = `${c.message_count} messages`;
      open.onclick = () => send({ type: "open_conversation", id: c.id });
      const del = document.createElement("button");
      del.className = "del";
      del.type = "button";
      del.textContent = "✕";
      del.setAttribute("aria-label", `Delete conversation ${c.title || c.id}`);
      del.onclick = async () => {
        await fetch(`/api/conversations/${c.id}`, { method: "DELETE" });
        if (c.id === conversationId) send({ type: "new_conversation" });
        refreshConversations();
      };
      li.append(open, del);
      ul.appendChild(li);
    }
  } catch (e) { /* server away: the list refreshes on reconnect */ }
}

function updateOutputs() {
  $("thr-out").textContent = Number($("thr").value).toFixed(2);
  $("sil-out").textContent = `${$("sil").value} ms`;
  $("minsp-out").textContent = `${$("minsp").value} ms`;
}

// ------------------------------------------------------------------ wiring
async function init() {
  try { cfg = await (await fetch("/config")).json(); } catch { cfg = null; }
  const tt = (cfg && cfg.turn_taking) || { threshold: 0.5, min_silence_ms: 500, min_speech_ms: 200 };
  $("thr").value = tt.threshold; $("sil").value = tt.min_silence_ms; $("minsp").value = tt.min_speech_ms;
  if (cfg && cfg.features) $("cues").checked = !!cfg.features.cue_tones;
  updateOutputs();
  for (const id of ["thr", "sil", "minsp"]) {
    $(id).addEventListener("input", updateOutputs);
    $(id).addEventListener("change", sendConfig);
  }
  $("voice-out").addEventListener("change", sendConfig);
  $("mic").addEventListener("click", toggleMic);
  $("stop").addEventListener("click", () => send({ type: "interrupt" }));
  $("new-conv").addEventListener("click", () => send({ type: "new_conversation" }));
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text").value.trim();
    if (!text) return;
    ensureAudio();
    send({ type: "text", text });
    $("text").value = "";
  });
  stats.conversationId = conversationId;
  renderMessages([]);
  refreshConversations();
  connect();
  setInterval(refreshConversations, 15000);
}

init();
