// @ts-check
// Reply audio out: owns the page's AudioContext, gapless playback of the PCM16 chunks main_app streams per
// sentence, the play clock, stopping on barge-in, how much of each turn was played (what main_app keeps in
// the history as "heard"), and the short cue tones.

/** @typedef {import("./protocol.js").AudioEvent} AudioEvent */
/** @typedef {import("./protocol.js").PlaybackMessage} PlaybackMessage */

// Per-turn bookkeeping is only asked about for the turn being played and the one just stopped.
const TURNS_KEPT = 8;
// Lead before the first chunk when nothing is queued: enough for the context to schedule it without a click.
const LEAD_S = 0.03;

/**
 * A Map that forgets its oldest entries beyond `max`.
 * @template K, V
 * @extends {Map<K, V>}
 */
export class RecentMap extends Map {
  /** @param {number} max */
  constructor(max) {
    super();
    this.max = max;
  }

  /** @param {K} key @param {V} value */
  set(key, value) {
    this.delete(key);  // re-inserted keys count as recent
    super.set(key, value);
    for (const oldest of this.keys()) {
      if (this.size <= this.max) break;
      this.delete(oldest);
    }
    return this;
  }
}

/** @typedef {{src: AudioBufferSourceNode, turn: number, start: number, dur: number, stopped: boolean}} Queued */

export class Player {
  /** @param {(report: PlaybackMessage) => void} onReport  playback reports for main_app */
  constructor(onReport) {
    this.onReport = onReport;
    /** @type {AudioContext | null} */
    this.ctx = null;
    this.defaultRate = 22050;
    this.nextPlayTime = 0;
    /** @type {Queued[]} */
    this.queued = [];
    /** Ms of fully played chunks per turn (chunks leave `queued` when they end). @type {RecentMap<number, number>} */
    this.playedByTurn = new RecentMap(TURNS_KEPT);
    /** Turns whose reply_end has arrived. @type {RecentMap<number, true>} */
    this.endedTurns = new RecentMap(TURNS_KEPT);
    this.chunksReceived = 0;
    this.chunksPlayed = 0;
    this.playedMsTotal = 0;
  }

  /**
   * The page's AudioContext, created on first use and resumed if the autoplay policy suspended it.
   * Call it from a user gesture first (the mic button, Send) so that replies may play.
   * @returns {AudioContext}
   */
  context() {
    if (!this.ctx) this.ctx = new AudioContext({ latencyHint: "interactive" });
    if (this.ctx.state === "suspended") this.ctx.resume();
    return this.ctx;
  }

  /** @param {number} rate  the TTS voice's rate, used when a chunk header has none */
  setDefaultRate(rate) { this.defaultRate = rate; }

  /**
   * Queue one chunk right after what is already queued.
   * @param {AudioEvent} header
   * @param {ArrayBuffer} buf  PCM16 mono
   */
  play(header, buf) {
    const ctx = this.context();
    const pcm = new Int16Array(buf);
    if (!pcm.length) return;
    const ab = ctx.createBuffer(1, pcm.length, header.sample_rate || this.defaultRate);
    const ch = ab.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = ctx.createBufferSource();
    src.buffer = ab;
    src.connect(ctx.destination);
    const start = Math.max(ctx.currentTime + LEAD_S, this.nextPlayTime);
    this.nextPlayTime = start + ab.duration;
    /** @type {Queued} */
    const entry = { src, turn: header.turn, start, dur: ab.duration, stopped: false };
    this.queued.push(entry);
    src.onended = () => this.chunkEnded(entry);
    src.start(start);
    this.chunksReceived++;
  }

  /** @param {Queued} entry */
  chunkEnded(entry) {
    if (entry.stopped) return;
    this.chunksPlayed++;
    this.playedMsTotal += entry.dur * 1000;
    this.playedByTurn.set(entry.turn, (this.playedByTurn.get(entry.turn) || 0) + entry.dur * 1000);
    this.queued = this.queued.filter((s) => s !== entry);
    const done = !this.hasQueued(entry.turn) && this.endedTurns.has(entry.turn);
    this.onReport({ type: "playback", turn: entry.turn, played_ms: Math.round(this.playedMs(entry.turn)), done });
  }

  /** @param {number} turn @returns {boolean} whether audio of `turn` is still queued or playing */
  hasQueued(turn) { return this.queued.some((s) => s.turn === turn); }

  /** @param {number} turn @returns {number} ms of `turn` played so far, by the play clock */
  playedMs(turn) {
    const now = this.ctx ? this.ctx.currentTime : 0;
    let ms = this.playedByTurn.get(turn) || 0;
    for (const s of this.queued) {
      if (s.turn === turn) ms += Math.max(0, Math.min(now - s.start, s.dur)) * 1000;
    }
    return ms;
  }

  /**
   * The reply's last event arrived; with nothing left to play, tell main_app the turn is done.
   * @param {number} turn
   */
  replyEnded(turn) {
    this.endedTurns.set(turn, true);
    if (this.hasQueued(turn)) return;  // the last chunk's end reports it
    this.onReport({ type: "playback", turn, played_ms: Math.round(this.playedMs(turn)), done: true });
  }

  /**
   * Silence everything queued now (barge-in) and report what was played of `turn`.
   * @param {number} turn
   */
  stopTurn(turn) {
    const played = this.playedMs(turn);
    this.stopAll();
    this.onReport({ type: "playback", turn, played_ms: Math.round(played) });
  }

  /** Silence everything queued, without a report (the connection is gone). */
  stopAll() {
    for (const s of this.queued) {
      s.stopped = true;
      try { s.src.stop(); } catch { /* not started yet or already stopped */ }
    }
    this.queued = [];
    this.nextPlayTime = 0;
  }

  /** A new connection is a new session, whose turn ids start again at 1: forget the old turns. */
  reset() {
    this.stopAll();
    this.playedByTurn.clear();
    this.endedTurns.clear();
  }

  /**
   * A short tone (e.g. when the page heard the end of the user's turn).
   * @param {number} freq  Hz
   * @param {number} [ms]
   */
  cue(freq, ms = 90) {
    if (!this.ctx) return;  // no context yet: the user has not interacted, nothing to cue
    const ctx = this.ctx;
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, ctx.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.08, ctx.currentTime + 0.01);
    gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + ms / 1000);
    osc.connect(gain).connect(ctx.destination);
    osc.start();
    osc.stop(ctx.currentTime + ms / 1000 + 0.02);
  }
}
