"""`.env.example` documents every setting of every service, as the code defines them."""

from pathlib import Path

from rvchat_common import envdoc

REPO = Path(__file__).resolve().parents[1]


def test_env_example_is_current():
    expected = envdoc.render()
    actual = (REPO / ".env.example").read_text()
    assert actual == expected, "regenerate with: .venv/bin/python -m rvchat_common.envdoc > .env.example"


def test_every_setting_has_a_description():
    for service, module in envdoc.SERVICES:
        cls = envdoc.settings_class(module)
        missing = [n for n, f in cls.model_fields.items() if not f.description]
        assert not missing, f"{service} settings without a description: {missing}"
