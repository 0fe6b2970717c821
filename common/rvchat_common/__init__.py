"""Code shared by the Realtime Voice Chat services: settings, errors, audio, health, metrics."""

from .app import build_app, require_ready
from .errors import APIError
from .settings import ServiceSettings

__all__ = ["APIError", "ServiceSettings", "build_app", "require_ready"]
