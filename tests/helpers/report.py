"""Lines a test file has to say at the end of the run (its counts), whatever order its tests ran
in: a module fixture appends to ``config.stash[SUMMARY]`` on teardown; tests/conftest.py prints
them in the terminal summary."""
import pytest

SUMMARY = pytest.StashKey[list]()
