"""TTS service: Piper speech, whole or streamed sentence by sentence, native and OpenAI-compatible API."""
