"""The bulk command's user-facing error: one sentence saying what is wrong and what to do."""

from __future__ import annotations

from tagger.errors import TaggerError


class BulkError(TaggerError, ValueError):
    """An input that cannot be read as a whole, a bad flag, or an output folder that cannot be resumed."""
