// @ts-check
// Mic capture, in the AudioWorklet scope: downsample from the AudioContext rate to 16 kHz PCM16 in 20 ms
// frames, posted to mic.js as {pcm: ArrayBuffer, rms: number}.
// Each output sample is the mean of the input samples in its interval (a box filter),
// which keeps most of the aliasing out without a heavier FIR.

/**
 * The AudioWorkletGlobalScope names we use (TypeScript's lib.dom does not describe that scope).
 * @type {{sampleRate: number, registerProcessor: (name: string, ctor: Function) => void,
 *   AudioWorkletProcessor: new () => {port: MessagePort}}}
 */
const scope = /** @type {any} */ (globalThis);

class MicProcessor extends scope.AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = scope.sampleRate / 16000;
    this.acc = 0;
    this.cnt = 0;
    this.pos = 0;
    this.frame = new Int16Array(320);
    this.n = 0;
    this.sumSq = 0;
    this.alive = true;
    // mic.js says "stop" when the mic is turned off: returning false from process() lets the node be collected.
    this.port.onmessage = (e) => { if (e.data === "stop") this.alive = false; };
  }

  /** @param {Float32Array[][]} inputs @returns {boolean} whether to keep the processor running */
  process(inputs) {
    if (!this.alive) return false;
    const input = inputs[0];
    if (!input || !input[0]) return true;
    const ch = input[0];
    for (let i = 0; i < ch.length; i++) {
      this.acc += ch[i];
      this.cnt++;
      this.pos += 1;
      if (this.pos >= this.ratio) {
        this.pos -= this.ratio;
        let v = this.acc / this.cnt;
        this.acc = 0;
        this.cnt = 0;
        v = Math.max(-1, Math.min(1, v));
        this.sumSq += v * v;
        this.frame[this.n++] = v < 0 ? v * 32768 : v * 32767;
        if (this.n === this.frame.length) {
          const rms = Math.sqrt(this.sumSq / this.n);
          const out = this.frame.slice(0);
          this.port.postMessage({ pcm: out.buffer, rms }, [out.buffer]);
          this.n = 0;
          this.sumSq = 0;
        }
      }
    }
    return true;
  }
}

scope.registerProcessor("mic-processor", MicProcessor);
