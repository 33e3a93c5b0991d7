"""The float64 golden-rule weights cached by `helpers._seeded_state` (M: 28 M, G: 55 M) are dropped after each module."""

from __future__ import annotations

import pytest

from tests.models.liveportrait.helpers import _seeded_state


@pytest.fixture(scope="module", autouse=True)
def _drop_cached_weights():
    yield
    _seeded_state.cache_clear()
