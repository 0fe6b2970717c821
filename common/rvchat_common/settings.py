"""Settings shared by every service.

Each service subclasses :class:`ServiceSettings` and sets its own ``env_prefix``
(``VAD_``, ``STT_``, ``TTS_``, ``LLM_``, ``APP_``), so one ``.env`` file can
configure the whole stack without names colliding.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Common knobs: where to listen, how to log, who may call, how much they may send."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    host: str = Field("0.0.0.0", description="Interface to bind.")
    port: int = Field(8000, description="TCP port to listen on.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_json: bool = Field(True, description="One JSON object per log line (false: plain text).")
    cors_origins: str = Field(
        "", description="Comma-separated list of other origins (e.g. 'https://app.example.com') whose "
        "pages may call this service from a browser (CORS) and send it state-changing requests; '*' "
        "allows any. Empty: only pages of the service's own origin (a site the user visits cannot "
        "read or change anything here)."
    )
    max_upload_mb: float = Field(
        25.0, description="Largest request body accepted, in MiB; larger ones get 413."
    )
    api_key: str | None = Field(
        None,
        description="When set, every endpoint but /healthz and /readyz needs "
        "'Authorization: Bearer KEY' or 'X-API-Key: KEY' (WebSockets may pass ?api_key=KEY).",
    )
    body_timeout_s: float = Field(
        15.0, gt=0, description="Longest wait for the next piece of a request body; a client that "
        "stalls longer gets 408 and the connection is closed (a slow upload keeps going as long as "
        "data keeps coming).")
    rate_limit_per_minute: int = Field(
        600, ge=0, description="Requests (and WebSocket connections) a client may make per minute, "
        "counted per API key or else per IP address, in bursts of up to as many; more get 429 with "
        "Retry-After. 0: no limit. Clients on rate_limit_exempt are never limited.")
    rate_limit_exempt: str = Field(
        "127.0.0.0/8,::1", description="Comma-separated networks never rate limited (default: this "
        "machine). Add your reverse proxy's or container network's, or empty it to limit localhost too.")
    max_queue: int = Field(
        8, description="Inference requests allowed to wait for the model; more get 503 + Retry-After."
    )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
