// @ts-check
// Realtime Voice Chat page, the wiring: mic -> socket (PCM16 16 kHz), main_app's events -> ui and player,
// the user's controls -> events. Modules: protocol.js (event types), socket.js, mic.js, player.js, ui.js.

import { Mic } from "./mic.js";
import { Player } from "./player.js";
import { Socket } from "./socket.js";
import * as ui from "./ui.js";

/** @typedef {import("./protocol.js").ServerEvent} ServerEvent */
/** @typedef {import("./protocol.js").PageConfig} PageConfig */
/** @typedef {import("./protocol.js").UiState} UiState */
/** @typedef {import("./protocol.js").LatencyEvent} LatencyEvent */
/** @typedef {import("./protocol.js").ServicesView} ServicesView */

// What the page keeps of a session for its own display and for tests; old entries are dropped.
const KEPT = 200;

const socket = new Socket({
  url: wsUrl, onOpen, onClose, onEvent: handle, onAudio: (header, pcm) => player.play(header, pcm),
});
const player = new Player((report) => socket.send(report));
const mic = new Mic((pcm, rms) => {
  ui.showLevel(rms);
  socket.sendAudio(pcm);
});

/** @type {string | null} */
let conversationId = new URLSearchParams(location.search).get("c") || localStorage.getItem("rvchat.conversation");
/** @type {UiState} */
let state = "idle";
let limitsLoaded = false;

// Exposed for tests and curious users: what the page has received and played.
const stats = {
  connected: false,
  /** @type {UiState} */ state: "idle",
  get audioChunksReceived() { return player.chunksReceived; },
  get audioChunksPlayed() { return player.chunksPlayed; },
  get playedMs() { return player.playedMsTotal; },
  get playbackPaused() { return player.paused; },
  /** @type {string[]} */ transcripts: [],
  /** @type {string[]} */ replies: [],
  /** @type {LatencyEvent[]} */ latencies: [],
  /** @type {string[]} */ events: [],
  /** @type {string | null} */ conversationId,
  micStarted: false,
  get micOn() { return mic.on; },
  /** @returns {MediaStreamTrackState[]} the mic tracks acquired last: "ended" once the mic is off */
  micTrackStates: () => mic.trackStates(),
  /** @type {ServicesView | null} */ services: null,
};
/** @type {any} */ (window).rvchat = stats;

/**
 * Append to a bounded log.
 * @template T
 * @param {T[]} list
 * @param {T} item
 */
function keep(list, item) {
  list.push(item);
  if (list.length > KEPT) list.splice(0, list.length - KEPT);
}

/** @param {number[]} xs @returns {number | null} */
function median(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

// ------------------------------------------------------------------ session state

/** @param {string | null} id */
function setConversation(id) {
  conversationId = id;
  stats.conversationId = id;
  if (id) localStorage.setItem("rvchat.conversation", id); else localStorage.removeItem("rvchat.conversation");
  const url = new URL(location.href);
  if (id) url.searchParams.set("c", id); else url.searchParams.delete("c");
  history.replaceState(null, "", url);
  refreshConversations();
}

/** @param {UiState} next */
function setState(next) {
  state = next;
  stats.state = next;
  ui.showState(next, mic.on);
}

// ------------------------------------------------------------------ socket

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = conversationId ? `?conversation_id=${encodeURIComponent(conversationId)}` : "";
  return `${proto}://${location.host}/ws${q}`;
}

function onOpen() {
  stats.connected = true;
  ui.showConnection(true, "connected");
  // Nothing is sent on connect: main_app's hello carries its turn-taking values, and the page shows them.
  if (!limitsLoaded) loadConfig();
}

/** @param {number} retryMs */
function onClose(retryMs) {
  stats.connected = false;
  ui.showConnection(false, `reconnecting in ${Math.round(retryMs / 1000)} s…`);
  player.reset();  // the next connection is a new session, whose turn ids start again
}

/** @param {ServerEvent} ev */
function handle(ev) {
  keep(stats.events, ev.type);
  switch (ev.type) {
    case "hello":
      setState(ev.state);
      ui.showServices(ev.services);
      stats.services = ev.services;
      ui.showConfig(ev.config);
      if (!ev.conversation_id) {
        if (conversationId) setConversation(null);
        ui.renderMessages([]);
      }  // else a `conversation` event with its messages follows
      break;
    case "conversation":
      setConversation(ev.id);
      ui.renderMessages(ev.messages || []);
      break;
    case "conversation_created": setConversation(ev.id); break;
    case "services":
      ui.showServices(ev);
      stats.services = ev;
      break;
    case "config": ui.showConfig(ev); break;
    case "audio_format": player.setDefaultRate(ev.sample_rate); break;
    case "state":
      if (ev.state === "thinking" && state === "user_speaking" && ui.cuesOn()) player.cue(660);
      setState(ev.state);
      break;
    case "speech_start": ui.removePartial(); break;
    case "partial": ui.showPartial(ev.text); break;
    case "no_speech": ui.removePartial(); break;
    case "transcript":
      keep(stats.transcripts, ev.text);
      ui.showTranscript(ev);
      break;
    case "reply_start": ui.replyBubble(ev.turn); break;
    case "reply_delta": ui.appendReply(ev.turn, ev.text); break;
    case "tool_call": ui.showToolCall(ev); break;  // shown while it runs
    case "tool_result": ui.showToolResult(ev); break;
    case "reply_end":
      keep(stats.replies, ev.text);
      ui.endReply(ev);
      player.replyEnded(ev.turn);
      break;
    case "latency": {
      keep(stats.latencies, ev);
      const voiced = stats.latencies.filter((l) => l.total_ms != null && l.endpoint_ms != null);
      ui.showLatency(ev, median(voiced.map((l) => /** @type {number} */ (l.total_ms))));
      break;
    }
    case "pause_playback": player.pause(ev.turn); break;  // speech over the reply: its words decide next
    case "resume_playback": player.resume(); break;  // only "mm-hm", or no words: play on
    case "stop_playback": player.stopTurn(ev.turn); break;
    case "interrupted": ui.markInterrupted(ev); break;
    case "error": {
      const msg = (ev.error && ev.error.message) || "error";
      ui.showError(ev.source ? `${ev.source.toUpperCase()}: ${msg}` : msg);
      break;
    }
    case "notice": ui.showError(ev.message); break;
    // audio: its PCM comes through onAudio; speech_end, audio_end, pong: nothing to show.
    default: break;
  }
}

// ------------------------------------------------------------------ controls

let micBusy = false;
async function toggleMic() {
  if (micBusy) return;  // a second click while the browser is still asking for the mic
  micBusy = true;
  try {
    if (mic.on) mic.stop();
    else await mic.start(player.context());
    if (mic.on) stats.micStarted = true;
  } catch (err) {
    ui.showBanner(`Microphone unavailable (${err instanceof Error ? err.message : err}). You can still type.`);
  } finally {
    micBusy = false;
  }
  ui.showMic(mic.on);
  setState(state === "idle" ? "listening" : state);
}

async function refreshConversations() {
  try {
    const r = await fetch("/api/conversations");
    /** @type {{conversations: import("./protocol.js").ConversationSummary[]}} */
    const { conversations } = await r.json();
    ui.showConversations(conversations, conversationId, {
      open: (id) => socket.send({ type: "open_conversation", id }),
      remove: async (id) => {
        await fetch(`/api/conversations/${id}`, { method: "DELETE" });
        if (id === conversationId) socket.send({ type: "new_conversation" });
        refreshConversations();
      },
    });
  } catch { /* server away: the list refreshes on reconnect */ }
}

/** Slider ranges, the message length limit and feature defaults from GET /config. */
async function loadConfig() {
  /** @type {PageConfig} */
  let cfg;
  try { cfg = await (await fetch("/config")).json(); } catch { return; }  // tried again on the next connect
  ui.applyLimits(cfg.limits);
  if (!stats.connected) ui.showConfig(cfg.turn_taking);  // until hello says what this session uses
  ui.setCues(cfg.features.cue_tones);
  limitsLoaded = true;
}

async function init() {
  await loadConfig();
  ui.onSettingsChange((change) => {
    if (!socket.send({ type: "config", ...change })) ui.revertConfig();  // offline: main_app keeps its values
  });
  ui.onComposerSubmit((text) => {
    player.context();  // a user gesture: lets the reply play
    socket.send({ type: "text", text });
  });
  document.getElementById("mic")?.addEventListener("click", toggleMic);
  document.getElementById("stop")?.addEventListener("click", () => socket.send({ type: "interrupt" }));
  document.getElementById("new-conv")?.addEventListener("click", () => socket.send({ type: "new_conversation" }));
  ui.renderMessages([]);
  refreshConversations();
  socket.connect();
  setInterval(refreshConversations, 15000);
}

init();
