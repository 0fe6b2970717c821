"""``python .../rvchat_common/healthcheck.py URL``: exit 0 when URL answers 200 (for container
HEALTHCHECKs, since slim images have no curl).

Standard library only, and run as a file rather than with ``-m``: ``-m`` imports the package first
(FastAPI, the app skeleton: 0.53 s of CPU against 0.05 s), which timed out under load."""

import sys
import urllib.request


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return 0 if resp.status == 200 else 1
    except Exception:
        return 1


if __name__ == "__main__":
    sys.exit(main())
