"""Shared fixtures. Provider test servers live in ``tests/helpers/fixtures.py``."""

from tests.helpers.fixtures import *  # noqa: F403
