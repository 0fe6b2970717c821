"""main_app: the browser voice chat page and the orchestrator over the VAD, STT, LLM and TTS services."""
