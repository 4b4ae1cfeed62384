"""Small assertion helpers shared by the test files."""

from __future__ import annotations

import pytest

from horizon.errors import HorizonError


def error_of(call, *needles: str) -> str:
    """The HorizonError message of `call`; asserts it is one line containing every needle."""
    with pytest.raises(HorizonError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message
