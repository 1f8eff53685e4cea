"""The README's two set-up commands stay true, and CI runs the same test command."""

from __future__ import annotations

import os
import re

from tests.popgate_server import REPO


def readme_commands() -> list[str]:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    return re.findall(r"```sh\n(.+?)\n```", text)[:2]


def test_readme_starts_with_run_and_test_commands():
    run, test = readme_commands()
    assert "popgate demo" in run
    assert "pytest" in test


def test_ci_runs_the_readme_test_command():
    _, test = readme_commands()
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = f.read().splitlines()
    assert test in ci
