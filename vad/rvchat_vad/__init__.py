"""Voice activity detection service (Silero VAD): REST /detect and a streaming /ws for turn-taking."""
