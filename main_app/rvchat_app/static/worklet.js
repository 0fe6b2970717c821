// @ts-check
// Mic capture, in the AudioWorklet scope: resample from the AudioContext rate to 16 kHz PCM16 in 20 ms
// frames, posted to mic.js as {pcm: ArrayBuffer, rms: number}.
//
// The resampler is the server's (common/rvchat_common/audio.py Resampler): a polyphase windowed sinc
// (Kaiser, 24 zero crossings, cut at 0.94 of 8 kHz), the same taps and sample times, with 1.6 ms of
// look-ahead. It replaced a box filter (each output the mean of the input samples in its interval):
// at a 44.1 kHz context, Chromium's default here, that one averaged 2 or 3 samples in turn, and its
// timing jitter and aliasing left the speech 12 dB above its own noise. Whisper did not mind, but
// Silero did: on the soft second half of a falsetto it heard 5-32 of the 36-47 speech windows it
// hears in the recording, and on a whisper 7-28 of 30-44, so the page lost the end of such
// utterances. Through this filter the page's audio is the server's resampling of the same signal.

/**
 * The AudioWorkletGlobalScope names we use (TypeScript's lib.dom does not describe that scope).
 * @type {{sampleRate: number, registerProcessor: (name: string, ctor: Function) => void,
 *   AudioWorkletProcessor: new () => {port: MessagePort}}}
 */
const scope = /** @type {any} */ (globalThis);

const OUT_RATE = 16000;
const ZERO_CROSSINGS = 24;
const CUTOFF = 0.94;
const KAISER_BETA = 9.0;

/** @param {number} x @returns {number} the modified Bessel function I0 (its power series) */
function besselI0(x) {
  let sum = 1;
  let term = 1;
  for (let k = 1; k < 100; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < 1e-12 * sum) break;
  }
  return sum;
}

/** @param {number} a @param {number} b @returns {number} */
function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * One row of taps per output phase p (of `up`), for inputs x[floor(t) - half + 1] .. x[floor(t) + half].
 * @param {number} up @param {number} fc cutoff, cycles per input sample @param {number} half
 * @returns {Float32Array}
 */
function polyphaseTaps(up, fc, half) {
  const width = 2 * half;
  const taps = new Float32Array(up * width);
  const norm = besselI0(KAISER_BETA);
  for (let p = 0; p < up; p++) {
    for (let j = 0; j < width; j++) {
      const t = j - half + 1 - p / up;
      const r = t / half;
      const window = besselI0(KAISER_BETA * Math.sqrt(Math.max(0, 1 - r * r))) / norm;
      const a = 2 * fc * t;
      const sinc = a === 0 ? 1 : Math.sin(Math.PI * a) / (Math.PI * a);
      taps[p * width + j] = 2 * fc * sinc * window;
    }
  }
  return taps;
}

/** Streaming polyphase resampler; output n sits at input time n * down / up, the input starts in silence. */
export class Resampler {
  /** @param {number} srcRate @param {number} dstRate */
  constructor(srcRate, dstRate) {
    const g = gcd(srcRate, dstRate);
    this.up = dstRate / g;
    this.down = srcRate / g;
    this.passthrough = srcRate === dstRate;
    const fc = 0.5 * Math.min(1, this.up / this.down) * CUTOFF; // cycles per input sample
    this.half = Math.ceil(ZERO_CROSSINGS / (2 * fc));
    this.width = 2 * this.half;
    this.taps = this.passthrough ? new Float32Array(0) : polyphaseTaps(this.up, fc, this.half);
    // Input kept from absolute index `base` on (the first `half` are the silence before the stream).
    this.buf = new Float32Array(this.width + 4096);
    this.len = this.half;
    this.base = -this.half;
    this.fed = 0; // input samples in
    this.out = 0; // output samples out
  }

  /**
   * Take `input`; write the outputs it completes into `out` (room for input.length * up / down + 2).
   * @param {Float32Array} input @param {Float32Array} out @returns {number} how many were written
   */
  push(input, out) {
    if (this.passthrough) {
      out.set(input);
      return input.length;
    }
    if (this.len + input.length > this.buf.length) {
      const grown = new Float32Array(this.len + input.length + 4096);
      grown.set(this.buf.subarray(0, this.len));
      this.buf = grown;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    this.fed += input.length;
    // Output n needs the input up to floor(n * down / up) + half.
    const end = Math.max(0, Math.ceil(((this.fed - this.half) * this.up) / this.down));
    const { buf, taps, width, up, down, half, base } = this;
    let written = 0;
    for (; this.out < end; this.out++) {
      const at = this.out * down;
      const first = Math.floor(at / up);
      const row = (at - first * up) * width;
      const start = first - half + 1 - base;
      let acc = 0;
      for (let j = 0; j < width; j++) acc += buf[start + j] * taps[row + j];
      out[written++] = acc;
    }
    // Keep what the next output needs: from floor(out * down / up) - half + 1 on.
    const keep = Math.floor((this.out * down) / up) - half + 1;
    if (keep > this.base) {
      this.buf.copyWithin(0, keep - this.base, this.len);
      this.len -= keep - this.base;
      this.base = keep;
    }
    return written;
  }
}

class MicProcessor extends scope.AudioWorkletProcessor {
  constructor() {
    super();
    const rate = Math.round(scope.sampleRate);
    this.resampler = new Resampler(rate, OUT_RATE);
    this.resampled = new Float32Array(0); // grown in process() to what a render quantum needs
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
    const room = Math.ceil((ch.length * OUT_RATE) / scope.sampleRate) + 2;
    if (this.resampled.length < room) this.resampled = new Float32Array(room);
    const count = this.resampler.push(ch, this.resampled);
    for (let i = 0; i < count; i++) {
      const v = Math.max(-1, Math.min(1, this.resampled[i]));
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
    return true;
  }
}

scope.registerProcessor("mic-processor", MicProcessor);
