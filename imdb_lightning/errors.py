"""Errors that mean "fix your input", shown to users as one line instead of a traceback."""


class UserError(ValueError):
    pass


class DataError(UserError):
    """Bad data: the message names the file, column, row or value."""


class ConfigError(UserError):
    """A bad option: the message names it."""
