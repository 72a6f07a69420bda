"""One base class for every problem that is the user's to fix: the app and the CLI show its message alone."""


class ExplorerError(ValueError):
    """A problem phrased for the user in one sentence; never shown with a traceback."""


class ModelError(ExplorerError):
    """A problem with a model spec or checkpoint, phrased for the user (one sentence, no traceback)."""
