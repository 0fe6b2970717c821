"""The self-hearing guard: the assistant's own voice in the mic must not count as the user speaking.

Owns: the reply audio the page is playing (the reference: what main_app sent, placed on the mic's
sample clock where the page's player plays it: after what is queued, or 30 ms after it arrives),
the echo path learnt from it (its delay and its gain per frequency), and the mic audio with the
assistant's echo taken out (the residual) that the VAD and STT listen to. Without headphones the page's speaker reaches its mic, and browser echo cancellation
is missing or fails on some browsers, speakerphones and loud rooms: the VAD then hears the reply and
the assistant barges in on itself.

How (the structure of WebRTC AEC3's echo suppressor, in numpy): the mic is cut in 32 ms frames every
16 ms (sqrt-Hann, 50% overlap, so with no echo the residual is the mic, 16 ms late). For each frame:

* the reference's power spectrum at the same place on the mic clock is kept for the last
  ``max_delay`` (the echo arrives 50-500 ms after the reference says a sample plays: the page's
  output buffer, the room, the mic's frames and the network);
* the echo's delay is found by correlating the mic's and the reference's log spectra over the last
  2 s at every delay in the window (harmonics of voiced speech make the peak sharp, one 16 ms frame);
* the echo's gain per frequency bin (room and speaker colouring, -6 to -40 dB) is the running
  median of mic power over reference power in bins where the reference sounds: a median, so the
  user talking over the reply (uncorrelated with it) does not pull it up;
* the expected echo power (gain x the loudest reference from 32 ms before to 64 ms after that
  delay, since a sentence that starts after the page's player ran dry comes back tens of ms off,
  with a decaying tail for the room's reverberation) is subtracted from each bin with a margin;
  bins that are mostly echo go quiet, bins where the user's voice is well above the echo stay. The
  user's speech and the reply's differ in pitch and formants, so a voice talking over the reply
  keeps most of its bins.

Until the delay is known (the start of a session's first reply) each delay's echo is bounded by what
the mic did not hear (a frame quiet where the reference that many frames back was loud rules a loud
echo at that delay out) and the expected echo is the reference around each delay at its bound, at
first -6 dB: delays already ruled out (at first all those shorter than the time the mic stayed quiet)
mask nothing. A search on the spectra's fine structure alone (the harmonics, which tell one voice from
another, not loudness, onsets or the spectral tilt every voice shares) finds the echo within ~0.1-0.3 s
of it reaching the mic, and confirms the loudness search's first find (that one alone lined a user's
onset up with the reply's: live, with no echo at all, an 'echo' 432 ms late took the user's voice out).
Offline (replies through 50-250 ms rooms at -6 to -20 dB and with none, users 6-12 dB under the reply
talking 0.1-0.5 s into a fresh session's first reply): over Piper's voice the VAD heard 67 of 72 instead
of 55, 37 within 400 ms of the onset instead of 17 (median 388 ms, 460 before); over a recorded reader
104 of 108 instead of 93, 85 within 300 ms instead of 48 (median 244, 292 before); unguarded the same
VAD takes 204-248 ms. The echo alone still never. (A gain learnt against the loudest reference
would follow the user's voice up once they talk over the reply.) After 1.5 s of reference with no
echo found (headphones, a browser's echo cancellation that works) the guard stands aside and the
residual is the mic.

Cost: one 512-point FFT and its inverse per 16 ms of mic, and a delay search every 128 ms: 150-166 us
of CPU per 20 ms mic frame with a reply playing (bench/results/echo.md). Until the delay is found (a
session's first ~0.5 s of echo) the bound and the harmonic search every 32 ms make it ~720 us a frame.
"""

from __future__ import annotations

import collections
import logging

import numpy as np

log = logging.getLogger("rvchat.app.echo")

RATE = 16000
HOP = 256  # 16 ms: the frame step, and the residual's delay behind the mic
WIN = 2 * HOP
BINS = WIN // 2 + 1
# The delay is searched on 125 Hz - 6 kHz (below: hum and the mic's rumble; above: little speech energy).
SEARCH_BINS = slice(4, 193)
SEARCH_FRAMES = 125  # 2 s of frames in one delay search
SEARCH_EVERY = 8  # frames between searches (128 ms)
SEARCH_MIN_ACTIVE = 30  # frames of reference (~0.5 s) before a search can be trusted
# Frames before / after the delay found over which the echo is expected (-32 / +64 ms). With 0-60 ms of
# jitter per sentence, +-1 frame let 9 of 27 simulated replies interrupt themselves, this span 3, and
# still heard a user talking over the reply in a median 264 ms.
JITTER_EARLY, JITTER_LATE = 2, 4
# The span also covers every delay the last searches found (~2.5 s): live, a 150 ms room's echo was found
# at 96-144 ms from one reply to the next, and the reply that started near the wrong end paused itself.
RECENT_DELAYS = 20
PAGE_LEAD_S = 0.03  # static/player.js LEAD_S: a chunk that finds the queue empty plays this long after it arrives
TAIL_FRAMES = 6  # reverberation kept after the echo's direct path: ~100 ms
TAIL_DECAY = 0.5  # per frame (-3 dB / 16 ms: a room of RT60 ~0.3 s)
GAIN_STEP_DB = 1.0  # the gain trackers move by at most this a frame
MIN_GAIN_DB, MAX_GAIN_DB = -60.0, 6.0
# Before the delay is known: a search on the log spectra's fine structure (less their envelope over FINE_BINS)
# over the frames in which the reference sounds, as soon as a few of them could have come back. Offline
# (Piper's voice and a reader through 15 rooms; 7 recordings of users with no echo, exact digital silence
# between words): the echo alone scored 0.26-0.51 at its delay within 0.1-0.3 s of reaching the mic, 0.2-0.45
# above any other delay; a user with no echo 0.25 at most. (The envelope left in, users scored up to 0.54.)
# At 0.45 it finds the clear cases (the 50 ms rooms, ~0.2 s in); the loudness search the rest ~0.5 s in, once
# its delay scores CONFIRM_SHAPE. Lower thresholds found the delay sooner but heard no more talk-overs: the
# bound below does that work until then.
EARLY_MIN_ACTIVE = 6
EARLY_SCORE, EARLY_MARGIN = 0.45, 0.2
EARLY_EVERY = 2
FINE_BINS = 9
CONFIRM_SHAPE = 0.3  # the shape score a first find of the loudness search needs at its delay
# Each delay's echo gain is bounded by what the mic did not hear: frames quiet where the reference k frames
# back was loud rule a loud echo at delay k out. The bound drops fast and rises slowly (a low quantile of the
# per-frame median ratio), lowered only when BOUND_FRAMES frames in a row say so. Offline, one frame was
# enough to rule the true delay out as its echo started (2 of 10 Piper syntheses then started speech through a
# 150 ms room); three frames, none in 75 (5 syntheses x 15 rooms), at the cost of 4 of the 30 first-reply
# talk-overs it had heard.
BOUND_DOWN_DB, BOUND_UP_DB = 4.0, 0.2
BOUND_SPAN = 1  # frames either side of a delay the bound is learnt against
BOUND_FRAMES = 3
NO_ECHO_AFTER = 94  # frames of reference (~1.5 s) searched without finding an echo: there is none
ALIGNED_QUANTILE = 0.5  # a median: the user talking over the reply does not pull the echo's gain up
REF_FLOOR = 1e-5  # reference bin power below which a bin is silent (a -70 dBFS noise floor is ~2e-5)


def _window() -> np.ndarray:
    n = np.arange(WIN)
    # Periodic Hann's square root: analysis x synthesis sums to exactly 1 at 50% overlap.
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * n / WIN)).astype(np.float64)


def _fine(logspec: np.ndarray) -> np.ndarray:
    """Log spectra less their envelope (a moving average over FINE_BINS): the harmonics, which tell one voice
    from another, without the spectral tilt every voice shares."""
    c = np.cumsum(np.pad(logspec, ((0, 0), (FINE_BINS // 2 + 1, FINE_BINS // 2)), mode="edge"), axis=1)
    return logspec - (c[:, FINE_BINS:] - c[:, :-FINE_BINS]) / FINE_BINS


class _GainTracker:
    """Per bin, a running quantile of log10(mic power / reference power) (stochastic quantile tracking:
    up by ``q`` steps when above it, down by ``1 - q`` when below)."""

    def __init__(self, start_db: float, quantile: float, step_db: float, max_db: float = MAX_GAIN_DB) -> None:
        self.log = np.full(BINS, start_db / 10)
        self.up = step_db / 10 * quantile
        self.down = step_db / 10 * (1 - quantile)
        self.max = max_db / 10
        self.updates = 0

    def update(self, mic: np.ndarray, ref: np.ndarray, active: np.ndarray) -> None:
        if not active.any():
            return
        ratio = np.log10(mic[active] + 1e-12) - np.log10(ref[active])
        self.log[active] += np.where(ratio >= self.log[active], self.up, -self.down)
        np.clip(self.log, MIN_GAIN_DB / 10, self.max, out=self.log)
        self.updates += 1

    @property
    def power(self) -> np.ndarray:
        return 10.0 ** self.log


class EchoGuard:
    """Mic PCM in, residual PCM out (same length, ``latency`` samples behind); reference via :meth:`far`."""

    latency = HOP

    def __init__(self, *, max_delay_ms: float = 500.0, margin_db: float = 12.0, stt_margin_db: float = 6.0,
                 start_gain_db: float = -6.0, min_correlation: float = 0.3) -> None:
        self.max_delay = int(max_delay_ms / 1000 * RATE / HOP) + 1  # in frames
        self.margin = 10 ** (margin_db / 10)
        self.stt_margin = 10 ** (stt_margin_db / 10)
        self.min_correlation = min_correlation
        self._w = _window()
        self._in = np.zeros(WIN)
        self._pending = np.zeros(0)
        self._ola = np.zeros((2, HOP))  # the VAD's residual and STT's
        self.samples = 0  # mic samples taken in
        # The mic clock: server time of mic sample 0 = the earliest (least delayed) arrival seen lately.
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()
        self.offset: float | None = None
        # The reference on the mic's sample clock: _ref[i] is mic sample _ref_base + i.
        self._ref = np.zeros(0, np.float32)
        self._ref_base = 0
        self._ref_until = 0  # the last reference sample placed (mic clock)
        self._held: list[np.ndarray] | None = None  # playback paused: the reference waiting to play
        depth = self.max_delay + JITTER_LATE + TAIL_FRAMES + 2
        self._ref_pow = np.zeros((depth, BINS))  # [k] = reference power spectrum k frames ago
        width = SEARCH_BINS.stop - SEARCH_BINS.start
        self._ref_log = np.full((SEARCH_FRAMES + self.max_delay, width), np.log10(REF_FLOOR))
        self._mic_log = np.full((SEARCH_FRAMES, width), np.log10(REF_FLOOR))
        self._ref_active = np.zeros(SEARCH_FRAMES + self.max_delay, bool)
        self._frames = 0
        self.delay: int | None = None  # frames
        self._delays: collections.deque[int] = collections.deque(maxlen=RECENT_DELAYS)  # the last searches' finds
        self._candidate: int | None = None
        self.correlation = 0.0
        self._start_gain_db = start_gain_db
        self._start_gain = 10 ** (start_gain_db / 10)
        self._searched = 0  # frames of reference seen while no echo was found
        self.no_echo = False  # that much reference and no echo (headphones, a working browser AEC)
        self._aligned = _GainTracker(start_gain_db, ALIGNED_QUANTILE, GAIN_STEP_DB)  # against the reference at the delay
        self._bound = np.full(self.max_delay, start_gain_db / 10)  # log10 of the echo's gain at each delay, at most
        self._bound_stats = np.full((BOUND_FRAMES, self.max_delay), np.inf)  # the last frames' median ratios

    @property
    def bounding(self) -> bool:
        """A reply is playing and its echo is not found yet: the VAD's residual only bounds the echo, so it may
        have heard a user talking over the reply late (their onset masked where the reply is loud)."""
        return self.delay is None and not self.no_echo and bool(self._ref_pow[: self.max_delay + TAIL_FRAMES].any())

    # ------------------------------------------------------------------ the reference
    def far(self, pcm: np.ndarray, sent_at: float) -> None:
        """Reply audio (float32 at 16 kHz) sent to the page at server time ``sent_at``. It plays as the
        page's player plays it: right after what is queued, or ``PAGE_LEAD_S`` after it arrives if
        nothing is (while playback is paused: after what waits, whenever it resumes)."""
        if self.offset is None or pcm.size == 0:
            return  # no mic yet: nothing to guard
        if self._held is not None:
            self._held.append(pcm)
            return
        pos = max(round((sent_at + PAGE_LEAD_S - self.offset) * RATE), self._ref_until)
        end = pos + pcm.size
        first_kept = self.samples - WIN
        if end <= first_kept:
            return
        if pos < first_kept:
            pcm, pos = pcm[first_kept - pos:], first_kept
        if self._ref.size == 0:
            self._ref_base = pos
        if pos < self._ref_base:  # cannot happen with a monotonic play clock; keep what fits
            pcm, pos = pcm[self._ref_base - pos:], self._ref_base
        need = end - self._ref_base
        if need > self._ref.size:
            self._ref = np.concatenate([self._ref, np.zeros(need - self._ref.size, np.float32)])
        self._ref[pos - self._ref_base:end - self._ref_base] = pcm
        self._ref_until = max(self._ref_until, end)

    def stop(self, at: float) -> None:
        """The page stopped playing at server time ``at`` (barge-in): nothing of the reference after it plays."""
        self._held = None
        self._cut(at)

    def pause(self, at: float) -> None:
        """The page paused at ``at``: what it had left to play waits (with what arrives meanwhile)."""
        if self._held is None:
            rest = self._cut(at)
            self._held = [rest] if rest.size else []

    def resume(self, at: float) -> None:
        """The page plays on from ``at`` what waited since the pause."""
        held, self._held = self._held, None
        if held:
            self.far(np.concatenate(held), at)

    def _cut(self, at: float) -> np.ndarray:
        """Take the reference from server time ``at`` on out of the timeline; return it."""
        if self.offset is None or self._ref.size == 0:
            return np.zeros(0, np.float32)
        cut = max(0, round((at - self.offset) * RATE) - self._ref_base)
        rest = self._ref[cut:self._ref_until - self._ref_base].copy()
        self._ref = self._ref[:cut]
        self._ref_until = min(self._ref_until, self._ref_base + cut)
        return np.trim_zeros(rest, "b")

    # ------------------------------------------------------------------ the mic
    def near(self, pcm16: bytes, arrived: float) -> bytes:
        """Mic PCM16 that arrived at server time ``arrived``; the VAD's residual, as many samples, 16 ms behind."""
        return self.listen(pcm16, arrived)[0]

    def listen(self, pcm16: bytes, arrived: float) -> tuple[bytes, bytes]:
        """Mic PCM16 that arrived at server time ``arrived``; the residuals for the VAD (``margin_db``) and for
        STT (``stt_margin_db``), each as many samples, 16 ms behind. Where no echo can be, both are the mic; so is
        STT's until the echo's delay is found.

        STT gets its own because it must understand the user's first words under the echo, not only tell that
        someone other than the assistant speaks: the VAD's margin takes out every bin the echo might hold and
        with them much of a user's onset, the mic leaves the echo's words in (a user's "No." became "the beauty of
        the city"). ``python -m bench.echo --stt``, 81 utterances talked over in 9 rooms, more than 40% wrong:
        from the mic 24-29, from the residual at 12 dB 16-20, at 6 dB 9-15, at 3 dB 19-23 (bench/results/echo.md)."""
        x = np.frombuffer(pcm16, dtype="<i2").astype(np.float64) / 32768.0
        self._clock(x.size, arrived)
        self._pending = np.concatenate([self._pending, x]) if self._pending.size else x
        out = []
        while self._pending.size >= HOP:
            block, self._pending = self._pending[:HOP], self._pending[HOP:]
            out.append(self._frame(block))
        if not out:
            return b"", b""
        y = np.concatenate(out, axis=1)
        pcm = np.clip(np.round(y * 32768.0), -32768, 32767).astype("<i2")
        return pcm[0].tobytes(), pcm[1].tobytes()

    def _clock(self, n: int, arrived: float) -> None:
        self.samples += n
        offset = arrived - self.samples / RATE
        while self._offsets and self._offsets[-1][1] >= offset:
            self._offsets.pop()  # a monotonic deque: its head is the minimum of the last 3 s
        self._offsets.append((arrived, offset))
        while self._offsets[0][0] < arrived - 3.0:
            self._offsets.popleft()
        self.offset = self._offsets[0][1]

    def _reference_frame(self, end: int) -> np.ndarray:
        """The reference samples that play where mic samples [end - WIN, end) were heard (zeros if none)."""
        start = end - WIN
        lo, hi = start - self._ref_base, end - self._ref_base
        if self._ref.size == 0 or hi <= 0 or lo >= self._ref.size:
            frame = np.zeros(WIN)
        else:
            frame = np.zeros(WIN)
            a, b = max(lo, 0), min(hi, self._ref.size)
            frame[a - lo:b - lo] = self._ref[a:b]
        # Samples before the next frame's start are no longer needed.
        drop = end - HOP - self._ref_base
        if drop > 0:
            self._ref = self._ref[drop:]
            self._ref_base += drop
        return frame

    def _frame(self, block: np.ndarray) -> np.ndarray:
        self._in[:HOP] = self._in[HOP:]
        self._in[HOP:] = block
        end = self.samples - self._pending.size  # mic sample just after this frame
        spec = np.fft.rfft(self._in * self._w)
        mic_pow = spec.real ** 2 + spec.imag ** 2
        ref = np.fft.rfft(self._reference_frame(end) * self._w)
        ref_pow = ref.real ** 2 + ref.imag ** 2
        self._ref_pow[1:] = self._ref_pow[:-1]
        self._ref_pow[0] = ref_pow
        self._frames += 1
        echo = self._echo(mic_pow)
        if echo is None:
            frames = np.repeat((np.fft.irfft(spec, WIN) * self._w)[None], 2, axis=0)
        else:
            # STT's only once the echo is found: until then the echo is only bounded (at first at -6 dB of the
            # reference at every delay), which with headphones (no echo at all) would take much of a user talking
            # over the first reply's first 1.5 s out of what STT hears ("I have a thousand thoughts" -> "I even
            # thought that's"). The VAD only has to tell that someone speaks.
            margins = (self.margin, self.stt_margin if self.delay is not None else 0.0)
            gains = [np.sqrt(np.clip(1.0 - margin * echo / (mic_pow + 1e-12), 0.0, 1.0)) for margin in margins]
            frames = np.fft.irfft(spec[None] * np.stack(gains), WIN, axis=1) * self._w
        out = self._ola + frames[:, :HOP]
        self._ola = frames[:, HOP:].copy()
        return out

    # ------------------------------------------------------------------ the echo
    def _echo(self, mic_pow: np.ndarray) -> np.ndarray | None:
        """The echo's expected power per bin in this frame; None when no echo can be in it."""
        self._track_delay(mic_pow)
        window = self._ref_pow[: self.max_delay + TAIL_FRAMES]
        if not window.any():
            return None  # no reference in the last max_delay: the residual is the mic
        if self.delay is None:
            if self.no_echo:
                return None
            # Not found yet: at each delay, the reference around it at the most its echo can be (the bound
            # learnt from what the mic did not hear; at first the starting gain). Delays ruled out add little,
            # so a user talking over the start of the first reply keeps the bins the echo cannot reach.
            spans = self._spans()
            self._update_bound(mic_pow)
            echo = (10.0 ** self._bound[:, None] * spans).max(axis=0)
        else:
            d = self.delay
            # The gain is learnt at the delay found (+-1 frame) ...
            near = self._ref_pow[max(0, d - 1): d + 2].max(axis=0)
            tail = self._ref_pow[d + 2: d + 2 + TAIL_FRAMES]
            if tail.size:
                decay = TAIL_DECAY ** np.arange(1, tail.shape[0] + 1)[:, None]
                near = np.maximum(near, (tail * decay).max(axis=0))
            self._aligned.update(mic_pow, near, near > REF_FLOOR)
            # ... and applied to the loudest reference of a wider span: each time the page's player runs dry
            # and starts again it adds its lead, and the network its jitter, so a sentence's echo can come
            # tens of ms off the delay found so far (the search needs ~0.3 s to follow it).
            lo, hi = min(self._delays, default=d), max(self._delays, default=d)
            around = self._ref_pow[max(0, min(d, lo) - JITTER_EARLY): max(d, hi) + JITTER_LATE + 1].max(axis=0)
            echo = self._aligned.power * np.maximum(near, around)
        return echo

    def _spans(self) -> np.ndarray:
        """[k] = per bin, the loudest reference from JITTER_EARLY frames before delay k to JITTER_LATE after
        it, and its reverberation tail: what an echo k frames late may hold at this frame."""
        depth = self.max_delay + JITTER_LATE + 1
        padded = np.concatenate([np.zeros((JITTER_EARLY, BINS)), self._ref_pow[:depth]])
        spans = np.lib.stride_tricks.sliding_window_view(padded, JITTER_EARLY + JITTER_LATE + 1, axis=0)
        spans = spans[: self.max_delay].max(axis=2)
        for j in range(1, TAIL_FRAMES + 1):
            tail = self._ref_pow[JITTER_LATE + j: JITTER_LATE + j + self.max_delay]
            spans[: tail.shape[0]] = np.maximum(spans[: tail.shape[0]], TAIL_DECAY ** j * tail)
        return spans

    def _update_bound(self, mic_pow: np.ndarray) -> None:
        # Against the reference within one frame of each delay: the wider span it is applied to would, at each
        # start of the reply's sound, rule the true delay out for the frames its echo has not yet come back in.
        ref = self._ref_pow[: self.max_delay + BOUND_SPAN, SEARCH_BINS]
        padded = np.concatenate([np.zeros((BOUND_SPAN, ref.shape[1])), ref])
        band = np.lib.stride_tricks.sliding_window_view(padded, 2 * BOUND_SPAN + 1, axis=0)[: self.max_delay].max(axis=2)
        loud = (band > REF_FLOOR * 100) & (band > band.max(axis=1, keepdims=True) * 1e-3)
        tested = loud.sum(axis=1) >= 10
        if not tested.any():
            return
        ratio = np.where(loud, np.log10(mic_pow[SEARCH_BINS] + 1e-12) - np.log10(band + 1e-30), np.nan)
        stat = np.full(self.max_delay, np.inf)
        stat[tested] = np.nanmedian(ratio[tested], axis=1)
        self._bound_stats[1:] = self._bound_stats[:-1]
        self._bound_stats[0] = stat
        # Lowered only by what the last BOUND_FRAMES frames all say: as an echo starts, its first frame holds
        # part of it against a whole frame of reference (a bound so lowered let Piper's voice through a
        # 150 ms room in 2 of 10 syntheses).
        med = self._bound_stats.max(axis=0)[tested]
        b = self._bound[tested]
        self._bound[tested] = np.minimum(np.where(med < b, b - BOUND_DOWN_DB / 10, b + BOUND_UP_DB / 10),
                                         self._start_gain_db / 10)

    def _shape_scores(self, ref_at: int, mic_at: int, ks: range) -> np.ndarray:
        """Per delay in ``ks``: the correlation of the mic's and the reference's spectral shapes (each frame's
        log spectrum less its mean) over the frames in which that reference sounds (0 if too few)."""
        n, k_max = SEARCH_FRAMES, self.max_delay
        ref = np.roll(self._ref_log, -(ref_at + 1), axis=0)
        act = np.roll(self._ref_active, -(ref_at + 1))
        mic = np.roll(self._mic_log, -(mic_at + 1), axis=0)
        ref, mic = _fine(ref), _fine(mic)
        scores = np.zeros(len(ks))
        for i, k in enumerate(ks):
            a = act[k_max - k: k_max - k + n]
            if a.sum() < EARLY_MIN_ACTIVE:
                continue
            r, m = ref[k_max - k: k_max - k + n][a], mic[a]
            r, m = r - r.mean(axis=0), m - m.mean(axis=0)
            scores[i] = (r * m).sum() / (np.sqrt((r * r).sum() * (m * m).sum()) + 1e-9)
        return scores

    def _shape_search(self, ref_at: int, mic_at: int) -> None:
        """The early search (see EARLY_SCORE): sets the delay if one stands out."""
        k_max = self.max_delay
        scores = self._shape_scores(ref_at, mic_at, range(k_max))
        best_k = int(np.argmax(scores))
        others = np.delete(scores, range(max(0, best_k - 2), min(k_max, best_k + 3)))
        if scores[best_k] >= EARLY_SCORE and (others.size == 0 or scores[best_k] - others.max() >= EARLY_MARGIN):
            log.info("echo guard: the reply's echo is %d ms late (early, shape %.2f)", best_k * HOP * 1000 // RATE,
                     scores[best_k])
            self.delay, self.no_echo = best_k, False
            self._delays.append(best_k)

    def _track_delay(self, mic_pow: np.ndarray) -> None:
        # Ring buffers of log spectra (row _pos is the newest); put in order only for a search.
        band = SEARCH_BINS
        ref_now = self._ref_pow[0]
        ref_at, mic_at = self._frames % self._ref_log.shape[0], self._frames % SEARCH_FRAMES
        self._ref_log[ref_at] = np.log10(ref_now[band] + REF_FLOOR)
        self._mic_log[mic_at] = np.log10(mic_pow[band] + REF_FLOOR)
        active = ref_now[band].max() > REF_FLOOR * 100
        self._ref_active[ref_at] = active
        if self.delay is None and not self.no_echo and active:
            self._searched += 1
            if self._searched == NO_ECHO_AFTER:
                self.no_echo = True
                log.info("echo guard: no echo of the reply in the mic; standing aside")
        if self.delay is None and self._searched and not self._frames % (SEARCH_EVERY if self.no_echo else EARLY_EVERY):
            self._shape_search(ref_at, mic_at)
        if self._frames % SEARCH_EVERY:
            return
        # Oldest first: mic frames t = 0..N-1, reference frames t = 0..N+K-1 (the last N are the mic's).
        if np.roll(self._ref_active, -(ref_at + 1))[-SEARCH_FRAMES:].sum() < SEARCH_MIN_ACTIVE:
            return
        ref = np.roll(self._ref_log, -(ref_at + 1), axis=0)
        mic = np.roll(self._mic_log, -(mic_at + 1), axis=0)
        m = mic - mic.mean(axis=0)
        m_norm = np.sqrt((m * m).sum()) + 1e-9
        # The echo k frames late: mic frame t against reference frame t + K - k. m's columns sum to 0, so
        # the reference's mean drops out of the numerator; its energy comes from running sums.
        n, k_max = SEARCH_FRAMES, self.max_delay
        windows = np.lib.stride_tricks.sliding_window_view(ref, n, axis=0)  # [start, bin, t]
        starts = k_max - np.arange(k_max)  # delay k starts at reference frame K - k
        num = np.einsum("tb,kbt->k", m, windows[starts])
        c1 = np.concatenate([np.zeros((1, ref.shape[1])), np.cumsum(ref, axis=0)])
        c2 = np.concatenate([np.zeros(1), np.cumsum((ref * ref).sum(axis=1))])
        sums = c1[starts + n] - c1[starts]
        energy = c2[starts + n] - c2[starts] - (sums * sums).sum(axis=1) / n
        scores = num / (m_norm * (np.sqrt(np.maximum(energy, 0.0)) + 1e-9))
        best_k = int(np.argmax(scores))
        best = float(scores[best_k])
        scores = list(scores)
        self.correlation = best
        others = [c for k, c in enumerate(scores) if abs(k - best_k) > 2]
        if best < self.min_correlation or (others and best - max(others) < 0.05):
            return  # no echo, or no clear delay (yet)
        if self.delay is None and self._shape_scores(ref_at, mic_at, range(max(0, best_k - 1),
                                                                       min(self.max_delay, best_k + 2))).max() < CONFIRM_SHAPE:
            # Loudness alone lines up any sound that starts after the reply did: live, a user talking over the
            # first reply with no echo at all (headphones) correlated 0.90 at 432 ms, and that 'echo' took
            # their voice out. A first find must also match in shape.
            return
        self._delays.append(best_k)
        if self.delay is None or abs(best_k - self.delay) <= 1:
            if self.delay is None:
                log.info("echo guard: the reply's echo is %d ms late (correlation %.2f)", best_k * HOP * 1000 // RATE,
                         best)
            self.delay, self._candidate, self.no_echo = best_k, None, False
        elif self._candidate is not None and abs(best_k - self._candidate) <= 1:
            # A new delay seen twice in a row (the page's buffering changed): follow it.
            log.info("echo guard: the echo moved from %d to %d ms late", self.delay * HOP * 1000 // RATE,
                     best_k * HOP * 1000 // RATE)
            self.delay, self._candidate = best_k, None
            self._aligned = _GainTracker(self._start_gain_db, ALIGNED_QUANTILE, GAIN_STEP_DB)
        else:
            self._candidate = best_k
