"""A real batch run (`scoring.batch.run_batch`, as `python -m scoring.batch` runs it) that stalls mid-load, for
the kill test: the champion's scorer wrapped in a `FaultyScorer` that sleeps before the second chunk is scored,
so the first chunk's predictions are in the staging table, uncommitted, when the test kills the process.

    python -m testing.faulty_batch --model churn --date 2026-10-26 --run-id killed --chunk-rows 300 --stall 120
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--date", required=True, type=dt.date.fromisoformat)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--chunk-rows", type=int, required=True)
    parser.add_argument("--stall", type=float, required=True, help="seconds to sleep after the first chunk")
    parser.add_argument("--stall-in-explain", action="store_true",
                        help="stall in the reasons instead (batch.explain: after every score is staged)")
    args = parser.parse_args(argv)

    from scoring import batch
    from scoring.registry import CHAMPION
    from scoring.scorer import Scorer
    from scoring.spec import load_spec
    from testing.faults import FaultyScorer

    spec = load_spec(args.model)
    scorer = FaultyScorer(Scorer.from_registry(spec, CHAMPION), stall_s=args.stall,
                          stall_from_call=1 if args.stall_in_explain else 2, explain_only=args.stall_in_explain)
    batch.run_batch(spec, args.date, args.run_id, scorer=scorer, chunk_rows=args.chunk_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
