"""Speech-to-text service: faster-whisper behind REST, an OpenAI-compatible API and a WebSocket stream."""
