"""LLM service: one API (/generate, /v1/chat/completions, /ws) in front of Ollama, any
OpenAI-compatible server, or an embedded GGUF model."""
