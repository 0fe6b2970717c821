"""Write ``.env.example`` from the services' settings classes, so it never drifts from the code.

``python -m rvchat_common.envdoc > .env.example``; a test checks the file is current.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

from pydantic_settings import BaseSettings

from .settings import ServiceSettings

SERVICES = [
    ("vad", "rvchat_vad.settings"),
    ("stt", "rvchat_stt.settings"),
    ("tts", "rvchat_tts.settings"),
    ("llm", "rvchat_llm.settings"),
    ("main_app", "rvchat_app.settings"),
]

HEADER = """\
# Realtime Voice Chat settings. Every variable is optional: the defaults run the whole stack
# on this machine with the embedded models (`make run`). Copy to .env and uncomment what you change.
# The services read .env from the directory they start in; docker compose substitutes it too.
# Generated from the settings classes by `python -m rvchat_common.envdoc` (a test keeps it current).

# Folder for models assembled at install time (faster-whisper base).
# RVCHAT_MODELS_DIR=~/.cache/rvchat/models
"""


def settings_class(module_name: str) -> type[BaseSettings]:
    module = importlib.import_module(module_name)
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, ServiceSettings) and c is not ServiceSettings]
    return classes[0]


def _value(default) -> str:
    if default is None:
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def document(cls: type[BaseSettings]) -> list[str]:
    prefix = cls.model_config.get("env_prefix", "")
    lines = []
    for name, field in cls.model_fields.items():
        desc = field.description or (field.json_schema_extra or {}).get("description", "")
        for line in textwrap.wrap(desc, 100):
            lines.append(f"# {line}")
        aliases = []
        alias = field.validation_alias
        if alias is not None:
            choices = getattr(alias, "choices", [alias])
            aliases = [c for c in choices if isinstance(c, str)]
        env = aliases[-1] if aliases else f"{prefix}{name}".upper()
        also = [a for a in aliases[:-1]]
        if also:
            lines.append(f"# (also read as {', '.join(a.upper() for a in also)})")
        lines.append(f"# {env.upper()}={_value(field.default)}")
        lines.append("")
    return lines


def render() -> str:
    out = [HEADER]
    for service, module in SERVICES:
        out.append(f"# ---- {service} " + "-" * (90 - len(service)))
        out.extend(document(settings_class(module)))
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
