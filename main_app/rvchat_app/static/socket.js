// @ts-check
// The WebSocket to main_app's /ws: connecting and reconnecting with backoff, typed events out, mic PCM out,
// and the framing of what comes in (JSON events; an `audio` header followed by its binary PCM frame).

/** @typedef {import("./protocol.js").ServerEvent} ServerEvent */
/** @typedef {import("./protocol.js").ClientEvent} ClientEvent */
/** @typedef {import("./protocol.js").AudioEvent} AudioEvent */

/**
 * @typedef {object} SocketHooks
 * @property {() => string} url  where to connect (asked again before each reconnect)
 * @property {() => void} onOpen
 * @property {(retryMs: number) => void} onClose  the next attempt is in retryMs
 * @property {(ev: ServerEvent) => void} onEvent  every JSON event (audio headers included)
 * @property {(header: AudioEvent, pcm: ArrayBuffer) => void} onAudio  a reply chunk with its header
 */

const MAX_RETRY_MS = 10000;
const TRY_AGAIN_LATER = 1013;  // the server is busy (or draining): back off at least this long
const BUSY_RETRY_MS = 5000;

export class Socket {
  /** @param {SocketHooks} hooks */
  constructor(hooks) {
    this.hooks = hooks;
    /** @type {WebSocket | null} */
    this.ws = null;
    this.retries = 0;
    /** @type {AudioEvent | null} the header whose binary frame comes next */
    this.pendingAudio = null;
  }

  get open() { return !!this.ws && this.ws.readyState === WebSocket.OPEN; }

  connect() {
    const ws = new WebSocket(this.hooks.url());
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.pendingAudio = null;
    ws.onopen = () => this.hooks.onOpen();
    ws.onclose = (e) => {
      // The backoff grows until a session really started (hello): a server that accepts the socket and
      // then turns it away (busy: 1013) must not be retried every half second.
      let delay = Math.min(MAX_RETRY_MS, 500 * 2 ** this.retries++);
      if (e.code === TRY_AGAIN_LATER) delay = Math.max(delay, BUSY_RETRY_MS);
      this.hooks.onClose(delay);
      setTimeout(() => this.connect(), delay);
    };
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") {
        if (this.pendingAudio) this.hooks.onAudio(this.pendingAudio, e.data);
        this.pendingAudio = null;
        return;
      }
      /** @type {ServerEvent} */
      let ev;
      try { ev = JSON.parse(e.data); } catch { return; }
      if (ev.type === "audio") this.pendingAudio = ev;
      if (ev.type === "hello") this.retries = 0;
      this.hooks.onEvent(ev);
    };
  }

  /**
   * @param {ClientEvent} event
   * @returns {boolean} false when not connected (the event is dropped: the server's state is shown as it is)
   */
  send(event) {
    if (!this.open || !this.ws) return false;
    this.ws.send(JSON.stringify(event));
    return true;
  }

  /** @param {ArrayBuffer} pcm  16 kHz PCM16 mono */
  sendAudio(pcm) { if (this.open && this.ws) this.ws.send(pcm); }
}
