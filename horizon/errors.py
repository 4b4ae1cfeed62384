"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class HorizonError(Exception):
    """A problem with the user's input or configuration (not a bug in horizon).

    The message is a single line naming the culprit (file, line, sample, option)
    and what is wrong with it.
    """


class SampleError(HorizonError):
    """A problem confined to one sample; `--on-error skip` records it and goes on."""

    def __init__(self, sample_id: str, message: str):
        super().__init__(f"sample {sample_id!r}: {message}")
        self.sample_id = sample_id
        self.reason = message
