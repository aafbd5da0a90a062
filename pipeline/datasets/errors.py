"""The one error a dataset reader raises for bad input."""


class DatasetError(ValueError):
    """A dataset folder or annotation file is missing or malformed; the message names the file (and line)."""
