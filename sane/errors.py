"""Errors the library raises for bad input: the CLI and the handlers turn them into clear messages."""


class InputError(ValueError):
    """Input that cannot be used as given (unreadable image, wrong shape, bad option).

    ``field`` names the offending request field or argument so servers can report it; ``status`` is
    the HTTP status a server answers with (400, or 413 for an image over the size limit).
    """

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.field = field
        self.status = int(status)
