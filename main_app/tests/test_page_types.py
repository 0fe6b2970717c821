"""The page's modules type-check (`// @ts-check` + JSDoc) with the TypeScript compiler, when one is installed.

The repo has no JS build step and no node_modules; to run this test, install tsc anywhere and point at it::

    npm install --prefix /tmp/tsc typescript
    TSC=/tmp/tsc/node_modules/.bin/tsc pytest main_app/tests/test_page_types.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[1] / "rvchat_app" / "static"


def test_page_modules_type_check():
    tsc = os.environ.get("TSC") or shutil.which("tsc")
    if not tsc:
        pytest.skip("no TypeScript compiler (set TSC or put tsc on PATH)")
    modules = sorted(STATIC.glob("*.js"))
    unchecked = [p.name for p in modules if not p.read_text().startswith("// @ts-check\n")]
    assert not unchecked, f"modules without // @ts-check: {unchecked}"
    r = subprocess.run([tsc, "--allowJs", "--checkJs", "--noEmit", "--strict", "--target", "es2020",
                        "--module", "es2020", "--lib", "es2020,dom", *map(str, modules)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
