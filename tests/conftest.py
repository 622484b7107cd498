import os
import sys

# Test helpers (the helpers package, release_check.py) live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))

from helpers.report import SUMMARY  # noqa: E402


def pytest_configure(config):
    config.stash[SUMMARY] = []


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(SUMMARY, []):
        terminalreporter.write_line(line)
