// @ts-check
// The microphone: getUserMedia and the AudioWorklet (worklet.js) that turns it into 16 kHz PCM16 frames
// of 20 ms, with their level. Turning it off stops the tracks, so the browser's mic indicator goes off;
// turning it on asks for the mic again.

const CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};

/** @typedef {{pcm: ArrayBuffer, rms: number}} MicFrame  what worklet.js posts */

export class Mic {
  /** @param {(pcm: ArrayBuffer, rms: number) => void} onFrame  called for every 20 ms frame while on */
  constructor(onFrame) {
    this.onFrame = onFrame;
    /** @type {MediaStream | null} the stream acquired last (kept after stop, for trackStates) */
    this.stream = null;
    /** @type {AudioNode[]} source -> worklet -> muted sink, disconnected on stop */
    this.nodes = [];
    /** @type {AudioWorkletNode | null} */
    this.worklet = null;
    /** @type {WeakSet<BaseAudioContext>} contexts that have loaded worklet.js */
    this.loaded = new WeakSet();
    this.on = false;
  }

  /**
   * Ask for the mic and start sending frames. Throws when the user or the browser refuses.
   * @param {AudioContext} ctx
   * @returns {Promise<void>}
   */
  async start(ctx) {
    if (this.on) return;
    if (!this.loaded.has(ctx)) {
      await ctx.audioWorklet.addModule("/static/worklet.js");
      this.loaded.add(ctx);
    }
    const stream = await navigator.mediaDevices.getUserMedia(CONSTRAINTS);
    if (this.on) {  // started twice while the first call awaited: keep the first
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "mic-processor");
    node.port.onmessage = (/** @type {MessageEvent<MicFrame>} */ e) => {
      if (this.on) this.onFrame(e.data.pcm, e.data.rms);
    };
    source.connect(node);
    // The worklet must be pulled by the graph; a muted gain keeps it running without echoing the mic.
    const sink = ctx.createGain();
    sink.gain.value = 0;
    node.connect(sink).connect(ctx.destination);
    this.stream = stream;
    this.worklet = node;
    this.nodes = [source, node, sink];
    this.on = true;
  }

  /** Release the mic: stop every track and take the worklet out of the graph. */
  stop() {
    this.on = false;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    for (const n of this.nodes) n.disconnect();
    this.nodes = [];
    if (this.worklet) {
      this.worklet.port.postMessage("stop");
      this.worklet.port.onmessage = null;
      this.worklet = null;
    }
  }

  /** @returns {MediaStreamTrackState[]} the state of each track acquired last ("live" or "ended") */
  trackStates() { return this.stream ? this.stream.getTracks().map((t) => t.readyState) : []; }
}
