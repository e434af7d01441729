"""Fixtures of the letter tests: one pool of render processes for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest

from service.channels.pdf import PdfRenderer, render_pool
from tests.helpers.notices import TEMPLATES_URL


@pytest.fixture(scope="session")
def pdf_pool() -> Iterator[ProcessPoolExecutor]:
    """Render processes started once (a process costs about a second to start)."""
    executor = render_pool(2)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def renderer(pdf_pool: ProcessPoolExecutor) -> PdfRenderer:
    """A renderer of the shipped templates on the shared pool (closing it keeps the pool)."""
    return PdfRenderer(2, base_url=TEMPLATES_URL, timeout_s=60, executor=pdf_pool)
