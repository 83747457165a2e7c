"""The bounded fuzz run `make test` makes: one end-to-end run shared by the tests of test_e2e.py.

`CIVICFLOW_FUZZ_SEED` and `CIVICFLOW_FUZZ_MESSAGES` change its seed and size (the deep run,
`make fuzz`, is `python -m tests.fuzz`); every failure message names the seed.
"""

from __future__ import annotations

import os
import random

import pytest

from fuzz.corpus import load_corpus
from fuzz.generators import generate
from fuzz.harness import Run, run_fuzz

FUZZ_SEED = int(os.environ.get("CIVICFLOW_FUZZ_SEED", "20260301"))
FUZZ_MESSAGES = int(os.environ.get("CIVICFLOW_FUZZ_MESSAGES", "2000"))


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory) -> Run:
    """FUZZ_MESSAGES generated messages and the corpus, through broker, listener, stage and publish."""
    corpus = [c for c in load_corpus() if c.e2e]
    messages = [*generate(random.Random(FUZZ_SEED), FUZZ_MESSAGES), *((c.topic, c.payload) for c in corpus)]
    run = run_fuzz(messages, tmp_path_factory.mktemp("fuzz"), via="jobs")
    run.seed = FUZZ_SEED
    return run
