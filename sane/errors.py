"""Errors the library raises for bad input: the CLI and the handlers turn them into clear messages."""


class InputError(ValueError):
    """Input that cannot be used as given (unreadable image, wrong shape, bad option).

    ``field`` names the offending request field or argument so servers can report it.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
