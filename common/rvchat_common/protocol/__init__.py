"""The typed WebSocket protocol of every service, used by the services, their clients and the fakes.

Namespaced use: ``from rvchat_common.protocol import vad; vad.SpeechStart(timestamp=1.2)``.
"""

from . import llm, stt, tts, vad
from .base import ErrorBody, ErrorEvent, Event, ProtocolError, WireModel, dump, parse

__all__ = ["ErrorBody", "ErrorEvent", "Event", "ProtocolError", "WireModel", "dump", "llm", "parse", "stt",
           "tts", "vad"]
