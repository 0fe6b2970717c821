// @ts-check
// Reply audio out: owns the page's AudioContext, gapless playback of the PCM16 chunks main_app streams per
// sentence, the play clock, pausing when the user starts speaking over a reply and resuming where it
// paused (main_app decides which, from the speech's words), stopping on barge-in, how much of each turn was
// played (what main_app keeps in the history as "heard"), and the short cue tones.

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

/**
 * One chunk, queued or playing. `start` is the context time at which its offset 0 plays (moved on by a resume);
 * while playback is paused `src` is null and `pausedAt` holds the seconds of it already played.
 * @typedef {{src: AudioBufferSourceNode | null, buffer: AudioBuffer, turn: number, start: number, dur: number,
 *   stopped: boolean, pausedAt: number | null}} Queued
 */

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
    /** Playback is paused (the user speaks over the reply): chunks queue up without playing. */
    this.paused = false;
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
    /** @type {Queued} */
    const entry = { src: null, buffer: ab, turn: header.turn, start: 0, dur: ab.duration, stopped: false,
                    pausedAt: this.paused ? 0 : null };
    this.queued.push(entry);
    if (!this.paused) this.schedule(entry, 0);
    this.chunksReceived++;
  }

  /**
   * Play `entry` from `offset` seconds in, right after what is scheduled already.
   * @param {Queued} entry
   * @param {number} offset
   */
  schedule(entry, offset) {
    const ctx = this.context();
    const src = ctx.createBufferSource();
    src.buffer = entry.buffer;
    src.connect(ctx.destination);
    const at = Math.max(ctx.currentTime + LEAD_S, this.nextPlayTime);
    this.nextPlayTime = at + entry.dur - offset;
    entry.src = src;
    entry.start = at - offset;
    entry.pausedAt = null;
    src.onended = () => { if (entry.src === src) this.chunkEnded(entry); };  // not a source a pause replaced
    src.start(at, offset);
  }

  /**
   * The user started speaking over the reply: silence it now, keeping the rest (and what still arrives) to
   * play from the same point on `resume`; report what was played of `turn`.
   * @param {number} turn
   */
  pause(turn) {
    if (!this.paused && this.ctx) {
      this.paused = true;
      const now = this.ctx.currentTime;
      for (const s of this.queued) {
        const played = Math.max(0, Math.min(now - s.start, s.dur));
        if (s.src && played >= s.dur) continue;  // its last samples are out: it ends (and counts) by itself
        s.pausedAt = s.src ? played : (s.pausedAt ?? 0);
        const src = s.src;
        s.src = null;  // its onended is no longer this chunk's end
        try { src?.stop(); } catch { /* not started yet */ }
      }
      this.nextPlayTime = 0;
    }
    this.paused = true;
    this.onReport({ type: "playback", turn, played_ms: Math.round(this.playedMs(turn)) });
  }

  /** Play on from where `pause` stopped (a false interruption: "mm-hm", a cough). */
  resume() {
    if (!this.paused) return;
    this.paused = false;
    for (const s of this.queued) {
      if (s.pausedAt != null) this.schedule(s, s.pausedAt);
    }
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
      if (s.turn !== turn) continue;
      ms += (s.pausedAt != null ? s.pausedAt : Math.max(0, Math.min(now - s.start, s.dur))) * 1000;
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
      try { s.src?.stop(); } catch { /* not started yet or already stopped */ }
    }
    this.queued = [];
    this.nextPlayTime = 0;
    this.paused = false;  // a stop ends the pause: the next reply plays
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
