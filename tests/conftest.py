"""
Shared pytest set-up.

Tests that need an outside service (slapd, PostgreSQL, MariaDB, curl, ...)
call L{tests.services.need} which skips with the reason when it is missing.
With C{POPGATE_REQUIRE_SERVICES=1} (as CI sets it) any skip is a failure, so
nothing can silently go untested.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_SERVICES = os.environ.get("POPGATE_REQUIRE_SERVICES") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but POPGATE_REQUIRE_SERVICES=1: {reason}"
