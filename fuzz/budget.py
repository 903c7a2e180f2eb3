"""Sizes the next pass of scripts/fuzz.sh: prints its `--max-examples`, or 0 when the passes
that ended and the ones still running will reach the target without it.

Usage: budget.py RUN_DIR TARGET_REQUESTS JOBS MAX_EXAMPLES

A pass is one `st run`; what it sends grows with `--max-examples` (n): about 30-40 requests per
unit of n for the fuzzing and stateful phases. Passes write their tally (fuzz/hooks.py) while
they run and their n to pass-NNN.n when they start, so the requests still to come from running
passes can be estimated, and the last passes made just big enough: without this, every lane
finished a whole pass after the target was already in reach (about 8% more requests, a minute).
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys

# Requests per unit of --max-examples of a fuzzing + stateful pass, until passes have shown theirs.
DEFAULT_PER_EXAMPLE = 34
# Smallest pass worth starting: below it, startup (imports, schema analysis) dominates.
MIN_EXAMPLES = 10


def main() -> None:
    run, target, jobs, max_examples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    sent = 0
    done_requests = done_examples = 0
    running: list[tuple[int, int]] = []  # (n, requests so far) of passes still running
    for path in glob.glob(os.path.join(run, "pass-*.n")):
        stem = path[: -len(".n")]
        n, phases = open(path).read().split()
        try:
            with open(stem + ".json") as f:
                tally = json.load(f)
        except (OSError, ValueError):
            tally = {"done": False, "requests": 0}
        sent += tally["requests"]
        if not tally["done"]:
            running.append((int(n), tally["requests"]))
        elif phases == "fuzzing,stateful":
            done_requests += tally["requests"]
            done_examples += int(n)
    per_example = done_requests / done_examples if done_examples else DEFAULT_PER_EXAMPLE
    still_to_come = sum(max(0, n * per_example - so_far) for n, so_far in running)
    remaining = target - sent - still_to_come
    if remaining <= 0:
        print(0)
        return
    # Spread what is left over the lanes free now (the caller's among them).
    share = remaining / max(1, jobs - len(running))
    print(max(MIN_EXAMPLES, min(max_examples, math.ceil(share / per_example))))


if __name__ == "__main__":
    main()
