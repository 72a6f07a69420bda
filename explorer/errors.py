"""The project's error types: one base class for every problem that is the user's to fix.

The app and the CLI show an :class:`ExplorerError`'s message alone, never a traceback; anything else is a bug and
is reported as one. Each package defines its own subclasses next to the code that raises them (``LayerError`` in
:mod:`explorer.layers`, ``FinetuneError`` in :mod:`explorer.transfer.training.finetune`, …); the ones several packages
raise live here.
"""


class ExplorerError(ValueError):
    """A problem phrased for the user in one sentence; never shown with a traceback."""


class ModelError(ExplorerError):
    """A problem with a model spec or checkpoint, phrased for the user (one sentence, no traceback)."""


class DataError(ExplorerError):
    """A problem with the user's data (an image, a folder, a zip), described in one sentence."""


def brief(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (or its type), cut to `limit` characters, for a user message."""
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text.splitlines()[0][:limit]


def msg(text: str) -> str:
    """Mark `text` as a sentence a user reads (a reason, a caveat, a description the app shows): it is returned as
    it is, and the app's translator (:mod:`explorer.ui.messages`) finds the f-string's template here to translate
    it. The message of a raised ``ExplorerError`` needs no mark."""
    return text
