"""The base error for bad or missing input: the CLI prints its message (which says what to do) and exits 2."""


class InputError(ValueError):
    """Input that cannot be used as given: a folder, file, flag value or earlier stage's output."""
