#!/usr/bin/env bash
# The containers, end to end, on a real Docker engine (`make docker-test`; not part of `make test`):
#   1. builds the five images (timed; sizes against their targets; the first layers shared by all five);
#   2. runs each alone with `docker run` on a non-default port (host network, <PREFIX>_PORT set): its
#      HEALTHCHECK must turn healthy there, /readyz answer 200 and one real request work (main_app's a
#      spoken reply through the four others, each in its own container);
#   3. brings the stack up with docker compose on free ports (LLM_PROVIDER=local; with the second STT
#      and TTS replicas of --profile replicas, which main_app's compose settings list), waits until all
#      are healthy, asks STT and TTS to describe themselves over Wyoming on their published ports (as
#      Home Assistant does when it is added), streams a real recording into main_app's /ws as the page
#      does, and checks the transcript, the reply, its audio and the history;
#   4. tears everything down: containers, the compose network and volumes, and the images.
# About 40 minutes on 2 cores the first time (15 of them compiling llama-cpp-python for the llm image;
# Docker caches that stage while the images are kept).
#
# Usage: scripts/docker-e2e.sh [--keep-images] [--no-build] [--no-replicas] [--report FILE] [--sizes-warn-only]
#   --keep-images      leave the five images (and the llm build stage) for another run or for use
#   --no-build         use the rvchat/*:latest images already there
#   --no-replicas      compose the five alone: main_app then skips stt-2 and tts-2 after a failed
#                      lookup, which needs a DNS answering for missing names (without NAT, as on an
#                      engine started with --iptables=false, each lookup hangs 20 s and stalls main_app)
#   --report FILE      also write the summary (markdown) to FILE
#   --sizes-warn-only  an image over its size target is reported, not a failure
# Environment: PYTHON_IMAGE (base image, default python:3.11-slim), E2E_CLIP (a tests/data/speech clip),
# DOCKER_NETWORK (for builds and the lone containers, default host).
# The images are tagged rvchat/<service>:latest, the names docker-compose.yml uses: an image of that name
# already there is replaced, and removed at the end unless --keep-images.
# Needs docker, docker compose (or docker-compose v1), curl and python3 (standard library only).
set -euo pipefail
cd "$(dirname "$0")/.."

KEEP_IMAGES=0 BUILD=1 REPORT="" SIZES_FAIL=1 REPLICAS=1
while (($#)); do
  case $1 in
    --keep-images) KEEP_IMAGES=1 ;;
    --no-build) BUILD=0 ;;
    --no-replicas) REPLICAS=0 ;;
    --report) REPORT=$2; shift ;;
    --sizes-warn-only) SIZES_FAIL=0 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim}
CLIP=${E2E_CLIP:-librispeech_61-70968-0000.wav}
NET=${DOCKER_NETWORK:-host}
SERVICES=(vad stt tts llm main_app)
declare -A PREFIX=([vad]=VAD [stt]=STT [tts]=TTS [llm]=LLM [main_app]=APP)
declare -A TARGET_MB=([vad]=350 [stt]=700 [tts]=550 [llm]=650 [main_app]=350)
PROJECT=rvchat-e2e   # compose project, and the prefix of the lone containers' names
WORK=$(mktemp -d /tmp/rvchat-docker-e2e.XXXXXX)
SUMMARY=()
FAILED_SIZES=()
OK=0

log() { printf '\n==> %s\n' "$*" >&2; }
note() { SUMMARY+=("$*"); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
past() { awk -v a="$1" -v b="$(now)" -v l="$2" 'BEGIN { exit !(b - a > l) }'; }  # T0 LIMIT_S
minsec() { awk -v s="$1" 'BEGIN { if (s >= 60) printf "%d m %02d s", s / 60, s % 60; else printf "%.0f s", s }'; }
py() { python3 "$WORK/check.py" "$@"; }
die() {
  echo "FAILED: $*" >&2
  exit 1
}
show_logs() {  # container...: the end of its log and its last health checks, for a failure
  for c in "$@"; do
    echo "--- docker logs $c (last 40 lines)" >&2; docker logs --tail 40 "$c" >&2 2>&1 || true
    echo "--- health checks of $c" >&2
    docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}{{.ExitCode}} {{.Start}} {{.Output}}{{"\n"}}{{end}}{{end}}' \
      "$c" >&2 2>&1 || true
  done
}

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  echo "neither 'docker compose' nor docker-compose is installed" >&2; exit 1
fi
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-300}  # compose v1's 60 s is too short on slow disks
for tool in docker curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "no Docker engine answers (docker info)" >&2; exit 1; }

declare -A APORT CPORT WPORT  # ports of the lone containers, of the composed stack, its Wyoming ports
PROFILE=() COMPOSED=("${SERVICES[@]}")
if ((REPLICAS)); then PROFILE=(--profile replicas); COMPOSED+=(stt-2 tts-2); fi
compose() {
  VAD_PORT=${CPORT[vad]} STT_PORT=${CPORT[stt]} TTS_PORT=${CPORT[tts]} LLM_PORT=${CPORT[llm]} \
    APP_PORT=${CPORT[main_app]} STT_WYOMING_PORT=${WPORT[stt]} TTS_WYOMING_PORT=${WPORT[tts]} \
    LLM_PROVIDER=local STT_MODEL=tiny.en \
    "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml "${PROFILE[@]}" "$@"
}

cleanup() {
  local rc=$?
  set +e
  log "tearing down"
  for s in "${SERVICES[@]}" client; do docker rm -fv "$PROJECT-$s" >/dev/null 2>&1; done
  if [[ -n ${CPORT[vad]:-} ]]; then compose down -v --remove-orphans >/dev/null 2>&1; fi
  if ((!KEEP_IMAGES)); then
    for s in "${SERVICES[@]}"; do docker image rm "rvchat/$s:latest" >/dev/null 2>&1; done
    docker image prune -f --filter label=rvchat.stage=llama-build >/dev/null 2>&1
  fi
  if ((OK)); then rm -rf "$WORK"; else
    ((${#SUMMARY[@]})) && { echo "--- measured before the failure:" >&2; printf '%s\n' "${SUMMARY[@]}" >&2; }
    echo "logs kept in $WORK" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT

# --------------------------------------------------------------------------------------------- helpers
cat > "$WORK/check.py" <<'PY'
"""Small checks for docker-e2e.sh (standard library only)."""
import json, re, socket, sys, wave
from array import array

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "ports":  # N free TCP ports, all different
    socks = [socket.socket() for _ in range(int(args[0]))]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    print(" ".join(str(s.getsockname()[1]) for s in socks))
elif cmd == "json":  # EXPR FILE: a Python expression over the JSON document j
    j = json.load(open(args[1]))
    print(eval(args[0], {"j": j}))
elif cmd == "wer":  # REF HYP
    norm = lambda t: re.sub(r"[^a-z0-9' ]+", " ", t.lower().replace("-", " ")).split()
    ref, hyp = norm(args[0]), norm(args[1])
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for k, h in enumerate(hyp, 1):
            cur[k] = min(prev[k] + 1, cur[k - 1] + 1, prev[k - 1] + (r != h))
        prev = cur
    print(f"{prev[-1] / max(1, len(ref)):.2f}")
elif cmd == "wav":  # FILE: seconds and RMS of a PCM16 WAV
    with wave.open(args[0]) as w:
        pcm = array("h", w.readframes(w.getnframes()))
        rate = w.getframerate()
    rms = (sum(x * x for x in pcm) / max(1, len(pcm))) ** 0.5
    print(f"{len(pcm) / rate:.2f} {rms:.0f}")
elif cmd == "wyoming":  # PORT: Wyoming describe -> the names of the programs in the info event
    with socket.create_connection(("127.0.0.1", int(args[0])), timeout=30) as s:
        s.sendall(b'{"type": "describe"}\n')
        f = s.makefile("rb")
        header = json.loads(f.readline())
        data = header.get("data") or {}
        if header.get("data_length"):
            data.update(json.loads(f.read(header["data_length"])))
    assert header["type"] == "info", header
    print(" ".join(p["name"] for kind in ("asr", "tts") for p in data.get(kind, [])))
elif cmd == "ref":  # CLIP: its reference text
    print(next(m["text"] for m in map(json.loads, open("tests/data/speech/manifest.jsonl"))
               if m["file"] == args[0]))
PY

# The voice turn, run inside the main_app image (it has websockets, numpy, PyAV and the project's own
# client: rvchat_app.testing.voice_turn, which streams a clip at real time like the page's mic).
cat > "$WORK/turn.py" <<'PY'
import asyncio, json, sys, time, urllib.request

import numpy as np
import websockets

from rvchat_app.testing import events_of, load_pcm16, voice_turn
from rvchat_common.testing import wer

ws_url, http_url, clip = sys.argv[1:4]
ref = next(m["text"] for m in map(json.loads, open("/speech/manifest.jsonl")) if m["file"] == clip)


async def turn() -> dict:
    async with websockets.connect(ws_url, max_size=None) as ws:
        services = json.loads(await ws.recv())["services"]
        deadline = time.monotonic() + 60
        while not all(s["up"] for s in services["services"].values()):
            if time.monotonic() > deadline:
                raise SystemExit(f"the session's services did not come up: {services}")
            msg = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(msg, str) and json.loads(msg)["type"] == "services":
                services = json.loads(msg)
        return await voice_turn(ws, load_pcm16(f"/speech/{clip}"), pad_s=1.0, timeout=120)


result = asyncio.run(turn())
transcripts, replies = events_of(result, "transcript"), events_of(result, "reply_end")
audio = events_of(result, "audio")
pcm = np.frombuffer(bytes(result["audio"]), dtype="<i2").astype(np.float32)
rate = audio[0]["sample_rate"] if audio else 22050
out = {
    "transcript": transcripts[0]["text"] if transcripts else None,
    "wer": round(wer(ref, transcripts[0]["text"]), 2) if transcripts else None,
    "reply": replies[0]["text"] if replies else None,
    "audio_s": round(pcm.size / rate, 2),
    "audio_rms": round(float(np.sqrt(np.mean(pcm ** 2))) if pcm.size else 0.0),
    "voice_to_voice_s": round(result["latency_s"], 2) if "latency_s" in result else None,
    "stages_ms": {k: v for k, v in (events_of(result, "latency") or [{}])[0].items() if k.endswith("_ms")},
}
created = events_of(result, "conversation_created")
if created:
    with urllib.request.urlopen(f"{http_url}/api/conversations/{created[0]['id']}", timeout=10) as r:
        out["history"] = [m["role"] for m in json.load(r)["messages"]]
problems = []
if len(transcripts) != 1 or out["wer"] > 0.3:
    problems.append(f"transcript {out['transcript']!r} (WER {out['wer']}) against {ref!r}")
if not out["reply"]:
    problems.append("no reply text")
if out["audio_s"] < 0.3 or out["audio_rms"] < 300:
    problems.append(f"reply audio {out['audio_s']} s at RMS {out['audio_rms']}")
if out.get("history") != ["user", "assistant"]:
    problems.append(f"history {out.get('history')}")
out["problems"] = problems
print(json.dumps(out))
sys.exit(1 if problems else 0)
PY

wait_ready() {  # CONTAINER URL TIMEOUT_S: until URL answers 200 (the container must keep running)
  local c=$1 url=$2 limit=$3 t0
  t0=$(now)
  until curl -fsS -o /dev/null --max-time 3 "$url" 2>/dev/null; do
    if [[ $(docker inspect -f '{{.State.Running}}' "$c") != true ]]; then show_logs "$c"; die "$c stopped"; fi
    if past "$t0" "$limit"; then show_logs "$c"; die "$url: not ready after $limit s"; fi
    sleep 0.5
  done
}
wait_healthy() {  # TIMEOUT_S CONTAINER...: until Docker's HEALTHCHECK says healthy for each
  local limit=$1 t0 c status; shift
  t0=$(now)
  for c in "$@"; do
    while :; do
      status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c")
      [[ $status == healthy ]] && break
      if [[ $status == unhealthy ]]; then show_logs "$c"; die "$c is unhealthy"; fi
      if past "$t0" "$limit"; then show_logs "$c"; die "$c: not healthy after $limit s ($status)"; fi
      sleep 1
    done
  done
}

# ------------------------------------------------------------------------------------------- 1. build
if ! docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 && ! docker pull -q "$PYTHON_IMAGE" >/dev/null; then
  die "base image $PYTHON_IMAGE: neither here nor pullable (without Docker Hub, make a local one: README, Deployment)"
fi
base_mb=$(docker image inspect -f '{{.Size}}' "$PYTHON_IMAGE" | awk '{ printf "%.0f", $1 / 1e6 }')
declare -A BUILD_S SIZE_MB
if ((BUILD)); then
  for s in "${SERVICES[@]}"; do
    log "building rvchat/$s (log: $WORK/build-$s.log)"
    t0=$(now)
    if ! docker build --network "$NET" --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -f "$s/Dockerfile" \
        -t "rvchat/$s:latest" . >"$WORK/build-$s.log" 2>&1; then
      tail -40 "$WORK/build-$s.log" >&2
      die "building $s"
    fi
    BUILD_S[$s]=$(since "$t0")
  done
  context=$(grep -ohE '(Sending build context to Docker daemon|transferring context:) +[0-9.]+ ?[kMG]?B' \
    "$WORK/build-vad.log" | tail -1 | grep -oE '[0-9.]+ ?[kMG]?B$' || true)
fi
note "## Images"
note ""
note "Base image $PYTHON_IMAGE: $base_mb MB.${context:+ Build context sent to the engine: $context.}"
note ""
note "| image | build | size | above the base | target | |"
note "|---|---|---|---|---|---|"
for s in "${SERVICES[@]}"; do
  docker image inspect "rvchat/$s:latest" >/dev/null 2>&1 || die "no image rvchat/$s:latest (run without --no-build)"
  SIZE_MB[$s]=$(docker image inspect -f '{{.Size}}' "rvchat/$s:latest" | awk '{ printf "%.0f", $1 / 1e6 }')
  verdict=ok
  if ((SIZE_MB[$s] > TARGET_MB[$s])); then verdict=OVER; FAILED_SIZES+=("$s"); fi
  built=${BUILD_S[$s]:+$(minsec "${BUILD_S[$s]}")}
  note "| $s | $built | ${SIZE_MB[$s]} MB | $((SIZE_MB[$s] - base_mb)) MB | ${TARGET_MB[$s]} MB | $verdict |"
done
# The first layers all five share (built once, stored once): the common prefix of their layer lists.
shared=$(for s in "${SERVICES[@]}"; do
    docker image inspect -f '{{range .RootFS.Layers}}{{.}} {{end}}' "rvchat/$s:latest"
  done \
  | awk '{ for (i = 1; i <= NF; i++) l[NR, i] = $i; n[NR] = NF } END {
      for (i = 1; ; i++) { for (r = 2; r <= NR; r++) if (l[r, i] != l[1, i] || i > n[r]) { print i - 1; exit } } }')
base_layers=$(docker image inspect -f '{{len .RootFS.Layers}}' "$PYTHON_IMAGE")
shared_mb=$(docker history --no-trunc --format '{{.CreatedBy}}|{{.Size}}' rvchat/vad:latest \
  | grep -m1 'pip install -r requirements/base.txt' | cut -d'|' -f2 || true)
note ""
note "All five share their first $((shared - base_layers)) layers above the base, among them the shared" \
  "requirements ($shared_mb)."

# -------------------------------------------------------------------------------------- 2. each alone
read -r -a ports <<<"$(py ports 12)"
i=0
for s in "${SERVICES[@]}"; do APORT[$s]=${ports[i]}; CPORT[$s]=${ports[i + 5]}; i=$((i + 1)); done
WPORT[stt]=${ports[10]} WPORT[tts]=${ports[11]}
WAV=tests/data/speech/$CLIP
REF=$(py ref "$CLIP")
note ""
note "## Each image alone (docker run --network $NET, a non-default port in <PREFIX>_PORT)"
note ""
note "| service | port | /readyz 200 | healthy (Docker) | one real request |"
note "|---|---|---|---|---|"
alone() {  # SERVICE [docker run options...]: start it, wait for /readyz and for Docker's healthy
  local s=$1 port=${APORT[$1]} t0 ready; shift
  log "$s alone on port $port"
  t0=$(now)
  docker run -d --name "$PROJECT-$s" --network "$NET" -e "${PREFIX[$s]}_PORT=$port" "$@" "rvchat/$s:latest" >/dev/null
  wait_ready "$PROJECT-$s" "http://127.0.0.1:$port/readyz" 300
  ready=$(since "$t0")
  wait_healthy 300 "$PROJECT-$s"
  ALONE_TIMES="$ready s | $(since "$t0") s"
}
for s in vad stt tts llm; do
  extra=()
  [[ $s == llm ]] && extra=(-e LLM_PROVIDER=local)
  alone "$s" "${extra[@]}"
  url=http://127.0.0.1:${APORT[$s]}
  case $s in
    vad)
      curl -fsS -H 'Content-Type: audio/wav' --data-binary "@$WAV" "$url/detect" -o "$WORK/vad.json"
      n=$(py json 'len(j["segments"])' "$WORK/vad.json")
      ((n >= 1)) || die "vad found no speech in $CLIP"
      what="POST /detect $CLIP: $n segment(s), $(py json 'j["speech_seconds"]' "$WORK/vad.json") s of speech" ;;
    stt)
      curl -fsS -F "file=@$WAV" -F model=whisper-1 "$url/v1/audio/transcriptions" -o "$WORK/stt.json"
      text=$(py json 'j["text"]' "$WORK/stt.json")
      w=$(py wer "$REF" "$text")
      awk -v w="$w" 'BEGIN { exit !(w <= 0.3) }' || die "stt heard '$text' (WER $w)"
      what="POST /v1/audio/transcriptions: \"$text\" (WER $w)" ;;
    tts)
      curl -fsS -H 'Content-Type: application/json' "$url/v1/audio/speech" -o "$WORK/tts.wav" \
        -d '{"input": "The containers are up, and this voice comes from one of them.", "response_format": "wav"}'
      read -r secs rms <<<"$(py wav "$WORK/tts.wav")"
      awk -v s="$secs" -v r="$rms" 'BEGIN { exit !(s > 1 && r > 300) }' || die "tts audio: $secs s, RMS $rms"
      what="POST /v1/audio/speech: $secs s of speech (RMS $rms)" ;;
    llm)
      curl -fsS -H 'Content-Type: application/json' "$url/v1/chat/completions" -o "$WORK/llm.json" \
        -d '{"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 40}'
      reply=$(py json 'j["choices"][0]["message"]["content"].strip()' "$WORK/llm.json")
      [[ -n $reply ]] || die "llm: empty reply"
      what="POST /v1/chat/completions (embedded SmolLM2): \"$reply\"" ;;
  esac
  note "| $s | ${APORT[$s]} | $ALONE_TIMES | $what |"
done
# main_app alone in its container, over the four lone services (host network: 127.0.0.1 reaches them).
alone main_app -e "APP_VAD_URL=http://127.0.0.1:${APORT[vad]}" -e "APP_STT_URL=http://127.0.0.1:${APORT[stt]}" \
  -e "APP_TTS_URL=http://127.0.0.1:${APORT[tts]}" -e "APP_LLM_URL=http://127.0.0.1:${APORT[llm]}"
url=http://127.0.0.1:${APORT[main_app]}
curl -fsS "$url/" -o "$WORK/page.html" && grep -qi '<html' "$WORK/page.html" || die "main_app: no page at /"
curl -fsS -H 'Content-Type: application/json' -d '{"text": "What is the capital of France?", "audio": true}' \
  "$url/api/message" -o "$WORK/app.json"
reply=$(py json 'j["text"]' "$WORK/app.json")
secs=$(py json 'j["audio"]["duration"]' "$WORK/app.json")
[[ -n $reply ]] && awk -v s="$secs" 'BEGIN { exit !(s > 0.2) }' || die "main_app: reply '$reply', $secs s of audio"
note "| main_app | ${APORT[main_app]} | $ALONE_TIMES | GET / (the page); POST /api/message through the" \
  "four: \"$reply\" + $secs s of speech |"
for s in "${SERVICES[@]}"; do docker rm -fv "$PROJECT-$s" >/dev/null; done

# -------------------------------------------------------------------------------------------- 3. compose
log "compose up on ports: $(for s in "${SERVICES[@]}"; do printf '%s %s ' "$s" "${CPORT[$s]}"; done)"
t0=$(now)
compose up -d --no-build >"$WORK/compose-up.log" 2>&1 &
up_pid=$!
declare -A HEALTHY_S
pending=("${COMPOSED[@]}")
while ((${#pending[@]})); do
  left=()
  for s in "${pending[@]}"; do
    c=$(compose ps -q "$s" 2>/dev/null || true)
    status=$([[ -n $c ]] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c" 2>/dev/null || true)
    if [[ $status == healthy ]]; then HEALTHY_S[$s]=$(since "$t0"); else left+=("$s"); fi
    if [[ $status == unhealthy ]]; then show_logs "$c"; die "compose: $s is unhealthy"; fi
  done
  pending=("${left[@]}")
  if ! kill -0 "$up_pid" 2>/dev/null && ! wait "$up_pid"; then
    cat "$WORK/compose-up.log" >&2; die "compose up"
  fi
  if ((${#pending[@]})); then
    if past "$t0" 600; then
      cat "$WORK/compose-up.log" >&2; die "compose: not healthy after 10 min: ${pending[*]}"
    fi
    sleep 1
  fi
done
wait "$up_pid" 2>/dev/null || true  # its failure was caught above
note ""
note "## Compose (free ports, LLM_PROVIDER=local, STT_MODEL=tiny.en${PROFILE[*]:+, ${PROFILE[*]}})"
note ""
each=$(for s in "${COMPOSED[@]}"; do printf '%s %s s, ' "$s" "${HEALTHY_S[$s]}"; done | sed 's/, $//')
note "All ${#COMPOSED[@]} containers healthy $(since "$t0") s after \`up -d\` (main_app waits for the" \
  "four it depends on): $each."
curl -fsS -o /dev/null "http://127.0.0.1:${CPORT[main_app]}/readyz" || die "main_app's published port"
# Wyoming (Home Assistant): compose turns it on in stt and tts and publishes it; describe must answer.
for s in stt tts; do
  programs=$(py wyoming "${WPORT[$s]}") || { show_logs "$(compose ps -q "$s")"; die "$s's Wyoming port"; }
  [[ $programs == *rvchat-$s* ]] || die "$s's Wyoming info names no rvchat-$s: $programs"
  note "Wyoming on $s's published port (${WPORT[$s]}): \`describe\` answered \`info\` naming $programs."
done

log "a voice turn through the composed main_app ($CLIP)"
if ! docker run --rm -i --name "$PROJECT-client" --network host -v "$PWD/tests/data/speech:/speech:ro" \
    "rvchat/main_app:latest" \
    python - "ws://127.0.0.1:${CPORT[main_app]}/ws" "http://127.0.0.1:${CPORT[main_app]}" "$CLIP" \
    <"$WORK/turn.py" >"$WORK/turn.json" 2>"$WORK/turn.log"; then
  cat "$WORK/turn.log" "$WORK/turn.json" >&2
  show_logs "$(compose ps -q main_app)"
  die "the voice turn"
fi
turn() { py json "$1" "$WORK/turn.json"; }
note ""
note "Voice turn: \`$CLIP\` streamed at real time into \`/ws\` on the published port, as the page does."
note ""
note "- heard: \"$(turn 'j["transcript"]')\" (WER $(turn 'j["wer"]') against the reference)"
note "- replied: \"$(turn 'j["reply"]')\", spoken: $(turn 'j["audio_s"]') s of audio (RMS $(turn 'j["audio_rms"]'))"
stages=$(turn '", ".join(f"{k[:-3]} {v:.0f}" for k, v in j["stages_ms"].items())')
note "- end of speech to first reply audio: $(turn 'j["voice_to_voice_s"]') s; stages (ms): $stages"
note "- history: $(turn '" then ".join(j["history"])')"

# ------------------------------------------------------------------------------------------- summary
OK=1  # every functional check passed: the logs need not be kept
if ((${#FAILED_SIZES[@]})); then
  note ""
  note "Over their size target: ${FAILED_SIZES[*]}."
fi
printf '%s\n' "${SUMMARY[@]}" | tee ${REPORT:+"$REPORT"}
if ((${#FAILED_SIZES[@]} && SIZES_FAIL)); then
  echo "FAILED: size targets (${FAILED_SIZES[*]}); --sizes-warn-only reports them without failing" >&2
  exit 1
fi
echo "docker e2e: passed" >&2
