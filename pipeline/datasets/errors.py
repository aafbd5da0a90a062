"""The one error a dataset reader raises for bad input."""

from pipeline.errors import InputError


class DatasetError(InputError):
    """A dataset folder or annotation file is missing or malformed; the message names the file (and line)."""
