"""Container healthchecks without curl in the image (docker-compose.yaml):

    python -m stack.healthcheck http http://localhost:8000/healthz   # 2xx within 5 s
    python -m stack.healthcheck worker                               # the async worker runs and its DB answers

Exit 0 when healthy, 1 (with the reason on stderr) when not.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from scoring.settings import CoreSettings


def check_http(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"no answer ({getattr(exc, 'reason', exc)})"


def check_worker() -> str | None:
    # The worker is the container's main process (PID 1): if it died the container would be gone, but a
    # worker that cannot reach its queue is up yet useless.
    cmdline = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "serving.worker" not in cmdline:
        return f"PID 1 is not the worker ({cmdline.strip()!r})"
    import psycopg

    try:
        psycopg.connect(CoreSettings.from_env().database_url, connect_timeout=3).close()
    except (ValueError, psycopg.Error) as exc:  # ValueError: a malformed DATABASE_URL (SettingsError)
        return f"queue database unreachable: {exc}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        reason = check_http(argv[1])
    elif argv == ["worker"]:
        reason = check_worker()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
