"""Errors that mean "fix your input", shown to users as one line instead of a traceback."""


class UserError(ValueError):
    pass


class DataError(UserError):
    """Bad data: the message names the file, column, row or value."""


class ConfigError(UserError):
    """A bad option: the message names it."""


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal other than Ctrl-C (SIGTERM: `kill`, a scheduler's timeout). A
    KeyboardInterrupt, so every place that cleans up after a Ctrl-C does the same for it."""

    def __init__(self, signal_name: str = "SIGTERM", detail: str = ""):
        super().__init__(f"{signal_name} {detail}".strip())
        self.signal_name = signal_name
