"""A real async worker process with a fault, for tests: `serving.job_worker.main` (same settings from the
environment: SERVING_MODEL, DATABASE_URL, WORKER_*) with its scorer wrapped in a `FaultyScorer`.

    python -m testing.faulty_worker --stall 120                      # claims, then hangs holding the leases
    python -m testing.faulty_worker --poison tenure_months=-4242     # jobs with that value fail at scoring
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from testing.faults import FaultyScorer


def _poison(text: str) -> tuple[str, Any]:
    feature, sep, value = text.partition("=")
    if not sep or not feature:
        raise argparse.ArgumentTypeError(f"expected <feature>=<json value>, got {text!r}")
    return feature, json.loads(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stall", type=float, default=0.0, help="seconds to sleep before every scoring call")
    parser.add_argument("--poison", type=_poison, default=None, help="<feature>=<json value> to refuse")
    args = parser.parse_args(argv)

    from serving import job_worker as worker

    return worker.main(wrap_scorer=lambda scorer: FaultyScorer(scorer, stall_s=args.stall, poison=args.poison))


if __name__ == "__main__":
    sys.exit(main())
