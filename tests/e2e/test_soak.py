"""The soak, short: ``TOLLWAY_SOAK_SECONDS`` (default 30) of mixed traffic with faults on a
schedule (:mod:`tests.soak`); ``make soak`` runs the 600-second version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.soak import BOUND, problems, run

pytestmark = pytest.mark.e2e

SECONDS = float(os.environ.get("TOLLWAY_SOAK_SECONDS", "30"))
RATE = float(os.environ.get("TOLLWAY_SOAK_RATE", "10"))


@pytest.mark.timeout(SECONDS + 120)
def test_soak_every_request_that_reached_the_provider_is_in_the_ledger_once_and_memory_is_flat(
        tmp_path: Path) -> None:
    figures = run(tmp_path, SECONDS, RATE)
    print(figures.report())
    assert len(figures.calls) >= 0.9 * SECONDS * RATE  # the rate held
    clean = sum(1 for c in figures.calls if c.clean)
    assert clean >= 0.5 * len(figures.calls), figures.report()  # the faults hurt some calls, not most
    # Every error a client got is in its SDK's format (a 503 from Redis, a 504 from the stall, a
    # 502 from a stream cut before its head...), or a stream that broke after its head.
    assert all(c.format_ok for c in figures.calls if c.status and c.status >= 400), figures.report()
    assert all(c.status == 200 for c in figures.calls if not c.clean and not (c.status and c.status >= 400)), \
        [c for c in figures.calls if not c.clean and c.status != 200]
    assert figures.recovered >= 1, figures.report()  # the requests the workers died under, from their journals
    assert figures.slowest.seconds < BOUND, figures.slowest
    assert not problems(figures), (problems(figures), figures.report())
