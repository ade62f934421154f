"""Every error whose message is written for people, in one place.

Each is raised with one sentence that says what is wrong and, where it helps, what to do.
The app shows these messages as they are (``gr.Error``), the CLI prints them; any other
exception is a bug and is reported generically.
"""

from __future__ import annotations


class TaggerError(Exception):
    """Base of the errors below: a problem the user can act on."""


# Start-up: the model files.
class ResolutionError(TaggerError, RuntimeError):
    """The checkpoint or vocabulary could not be obtained (Hub, cache or local path)."""


class CheckpointError(TaggerError, ValueError):
    """The checkpoint file is missing, not safetensors, truncated or not a tagger checkpoint."""


class VocabularyError(TaggerError, ValueError):
    """The vocabulary file is missing, malformed or does not match the checkpoint."""


# Requests.
class ImageError(TaggerError, ValueError):
    """An input that cannot be decoded as an image."""


class FetchError(TaggerError, ValueError):
    """A URL that may not or could not be downloaded."""


class UploadError(TaggerError, ValueError):
    """An upload refused as a whole: too large, an unsafe archive, nothing to tag."""


class TimeBudgetError(ImageError):
    """An image left unread because its request spent its time or pixel budget (the others stay)."""


class SelectionError(TaggerError, ValueError):
    """A selection or format argument is out of range."""


class FeatureError(TaggerError, ValueError):
    """A request the feature views cannot serve: bad colour, unknown tag, zip without two folders."""


class ModelRunError(TaggerError, RuntimeError):
    """The model could not run this request (out of memory)."""


class RelationsError(TaggerError, ValueError):
    """A tag implication or alias file that cannot be read, or relations that form a cycle."""


# The bulk command (``python -m tagger.bulk``).
class BulkError(TaggerError, ValueError):
    """An input that cannot be read as a whole, a bad flag, or an output folder that cannot be resumed."""


def shorten(text: str, limit: int = 500) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis: a message echoing what a client
    sent (a 10 MB tag list) stays readable, and so does the log that records it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


MiB = 1024 * 1024
GiB = 1024 * MiB


def format_bytes(n: int) -> str:
    """``1.07 MiB``, ``512 MiB``, ``16 GiB``: three significant figures at most."""
    if n < MiB:
        return f"{n:,} bytes"
    value, unit = (n / GiB, "GiB") if n >= GiB else (n / MiB, "MiB")
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


# The errors a request handler shows as they are.
USER_ERRORS: tuple[type[TaggerError], ...] = (
    ImageError,
    FetchError,
    UploadError,
    SelectionError,
    FeatureError,
    ModelRunError,
)
