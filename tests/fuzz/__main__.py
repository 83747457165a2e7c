"""The deep fuzz run (`make fuzz`): `python -m tests.fuzz [--messages N] [--seed S] [--via batch|jobs]`.

Generates N messages (default 100,000) from a seeded random generator, adds the regression corpus,
runs them end to end (tests/fuzz/harness.py) and prints the summary. The seed is printed first, so
a failing run is reproduced with `--seed`. Exit 0 when nothing is unaccounted for; otherwise 1,
with the run's directory kept and the messages behind each problem written there as corpus lines
(`failures.jsonl`) to check and add to tests/fuzz/corpus/.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: brokers, listeners, fuzz

from fuzz.corpus import Outcome, case_line, load_corpus  # noqa: E402
from fuzz.generators import generate  # noqa: E402
from fuzz.harness import run_fuzz, summary  # noqa: E402

FAILURES_MAX = 500
"""Messages written to failures.jsonl at most (a stage that fails makes every message a problem)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="generated messages (default 100000)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the generator (default: random)")
    parser.add_argument(
        "--via",
        choices=("batch", "jobs"),
        default="batch",
        help="stage and publish through `civicflow batch` (Airflow, default) or the jobs layer",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run here (default: a temp dir)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    again = f"--seed {seed} --messages {args.messages} --via {args.via}"
    print(f"fuzz seed {seed} (reproduce: make fuzz FUZZ_ARGS='{again}')")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="civicflow-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    messages = list(generate(random.Random(seed), args.messages))
    corpus = [c for c in load_corpus() if c.e2e]
    run = run_fuzz([*messages, *((c.topic, c.payload) for c in corpus)], workdir, via=args.via, log=print)
    run.seconds["total"] = time.monotonic() - started
    print(summary(run, seed))
    problems = run.all_problems()
    if not problems:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    failures = workdir / "failures.jsonl"
    with failures.open("w") as fh:
        for n, record in enumerate(islice(run.ledger.failed_records(), FAILURES_MAX)):
            outcome = Outcome.of(record.accepted, record.quarantined.elements())
            fh.write(
                case_line(
                    f"seed-{seed}-{n}",
                    record.topic,
                    record.payload,
                    outcome,
                    note="; ".join(record.problems)[:500],
                    received_at=record.received_at,
                )
                + "\n"
            )
    print(f"run kept in {workdir}; the messages behind the first problems are in {failures}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
