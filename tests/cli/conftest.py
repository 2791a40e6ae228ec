"""Fixtures of the command-line tests (helpers in ``clihelpers``)."""
from __future__ import absolute_import

import pytest

from clihelpers import run_cli


@pytest.fixture
def cli():
    """``cli(args, cwd=None, env=None, timeout=120, drop_env=())``: run the command."""
    return run_cli
