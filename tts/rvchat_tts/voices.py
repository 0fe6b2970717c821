"""Which voices exist and what a requested voice name means.

Clients ask for voices by many names: an installed Piper voice
(``en_US-joe-medium``), a generic alias (``en_female``, ``default``) or an
OpenAI voice (``alloy``, ``nova``...). :class:`VoiceCatalog` maps each to an
installed voice. A name it does not know falls back to the default voice
(with a warning in the log and the voice used in the ``X-Voice`` header):
asking for a missing voice is never worth a failed request in a voice chat.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from rvchat_common.models import DEFAULT_PIPER_VOICE, ModelNotFound, embedded_piper_voice, piper_voice

log = logging.getLogger("rvchat.tts")

# Preferred installed voices for each generic alias, best first; the default voice when none is installed.
_MALE = ["en_US-joe-medium", "en_US-ryan-high", "en_US-ryan-medium", "en_US-hfc_male-medium",
         "en_GB-alan-medium", "en_US-john-medium", "en_GB-northern_english_male-medium"]
_FEMALE = ["en_US-amy-medium", "en_US-lessac-medium", "en_US-kristin-medium", "en_US-hfc_female-medium",
           "en_GB-jenny_dioco-medium", "en_GB-alba-medium", "en_US-ljspeech-high"]
BUILTIN_ALIASES: dict[str, list[str]] = {
    "default": [],
    "en": [], "en_us": [], "en-us": [], "english": [],
    "en_male": _MALE, "male": _MALE, "man": _MALE,
    "en_female": _FEMALE, "female": _FEMALE, "woman": _FEMALE,
    # OpenAI's voices, by the character OpenAI gives them.
    "alloy": [], "ash": _MALE, "ballad": _MALE, "coral": _FEMALE, "echo": _MALE, "fable": _MALE,
    "onyx": _MALE, "nova": _FEMALE, "sage": _FEMALE, "shimmer": _FEMALE, "verse": _MALE,
    "marin": _FEMALE, "cedar": _MALE,
}


@dataclass(frozen=True)
class VoiceFiles:
    name: str
    model: Path
    config: Path

    def _read_config(self) -> dict:
        try:
            cfg = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
        return cfg if isinstance(cfg, dict) else {}

    def info(self) -> dict:
        cfg = self._read_config()
        return {
            "name": self.name,
            "sample_rate": cfg.get("audio", {}).get("sample_rate"),
            "language": _language_of(cfg),
            "quality": cfg.get("audio", {}).get("quality"),
            "speakers": cfg.get("num_speakers", 1),
        }

    @cached_property
    def language(self) -> str | None:
        """The voice's language as its config states it ("en_US", or espeak's "de"); None if unstated.

        Read once: the normaliser asks for every sentence.
        """
        return _language_of(self._read_config())


def _language_of(cfg: dict) -> str | None:
    code = (cfg.get("language") or {}).get("code") or (cfg.get("espeak") or {}).get("voice")
    return code if isinstance(code, str) and code.strip() else None


@dataclass(frozen=True)
class Resolved:
    voice: str          # installed voice name used
    requested: str | None
    fallback: bool      # the request named a voice we do not have


class VoiceCatalog:
    def __init__(self, default: str, voices_dir: str | None = None, extra_aliases: str = "",
                 allow_paths: bool = False) -> None:
        self.voices_dir = Path(voices_dir) if voices_dir else None
        self.allow_paths = allow_paths
        self.voices: dict[str, VoiceFiles] = {}
        self.scan()
        self.default = self._add_default(default)
        self.extra_aliases: dict[str, str] = {}
        if extra_aliases.strip():
            try:
                parsed = json.loads(extra_aliases)
                if not isinstance(parsed, dict):
                    raise ValueError("not a JSON object")
                self.extra_aliases = {str(k).lower(): str(v) for k, v in parsed.items()}
            except ValueError as exc:
                log.warning("ignoring TTS_VOICE_ALIASES (%s); expected a JSON object", exc)

    def scan(self) -> None:
        model, config = embedded_piper_voice()
        if model.is_file() and config.is_file():
            self.voices[DEFAULT_PIPER_VOICE] = VoiceFiles(DEFAULT_PIPER_VOICE, model, config)
        if self.voices_dir and self.voices_dir.is_dir():
            for onnx in sorted(self.voices_dir.glob("*.onnx")):
                config = onnx.with_name(onnx.name + ".json")
                if config.is_file():
                    self.voices.setdefault(onnx.stem, VoiceFiles(onnx.stem, onnx, config))

    def _add_default(self, name: str) -> str:
        if name in self.voices:
            return name
        model, config = piper_voice(name, self.voices_dir)  # a path, or a name in voices_dir
        self.voices[model.stem] = VoiceFiles(model.stem, model, config)
        return model.stem

    def aliases(self) -> dict[str, str]:
        """Every alias and the installed voice it maps to now."""
        table = {alias: self._pick(prefs) for alias, prefs in BUILTIN_ALIASES.items()}
        for alias, target in self.extra_aliases.items():
            table[alias] = target if target in self.voices else self.default
        return table

    def _pick(self, preferences: list[str]) -> str:
        return next((v for v in preferences if v in self.voices), self.default)

    def resolve(self, requested: str | None) -> Resolved:
        if requested is None or not str(requested).strip():
            return Resolved(self.default, requested, False)
        name = str(requested).strip()
        lowered = {v.lower(): v for v in self.voices}
        if name.lower() in lowered:
            return Resolved(lowered[name.lower()], requested, False)
        key = name.lower()
        if key in self.extra_aliases:
            target = self.extra_aliases[key]
            return Resolved(target if target in self.voices else self.default, requested, False)
        if key in BUILTIN_ALIASES:
            return Resolved(self._pick(BUILTIN_ALIASES[key]), requested, False)
        if self.allow_paths and name.endswith(".onnx"):
            try:
                model, config = piper_voice(name)
            except (ModelNotFound, OSError, ValueError):
                pass
            else:
                key = str(model)
                self.voices.setdefault(key, VoiceFiles(key, model, config))
                return Resolved(key, requested, False)
        if self.voices_dir:  # a voice copied into the folder since start-up
            self.scan()
            if name in self.voices:
                return Resolved(name, requested, False)
        log.warning("unknown voice %r: using the default voice %s", name[:80], self.default)
        return Resolved(self.default, requested, True)

    def language(self, voice: str | None) -> str | None:
        """The language of a voice (an installed name, or any name ``resolve`` accepts)."""
        files = self.voices.get(voice) if voice else None
        if files is None:
            files = self.voices.get(self.resolve(voice).voice)
        return files.language if files is not None else None

    def listing(self) -> list[dict]:
        return [{**files.info(), "default": name == self.default} for name, files in self.voices.items()]
