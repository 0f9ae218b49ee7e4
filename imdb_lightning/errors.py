"""Errors that mean "fix your input", shown to users as one line instead of a traceback."""


class UserError(ValueError):
    pass


class DataError(UserError):
    """Bad data: the message names the file, column, row or value."""


class ConfigError(UserError):
    """A bad option: the message names it."""


def check_ranges(section: str, at_least_1: dict = {}, at_least_0: dict = {}, fractions: dict = {}) -> None:  # noqa: B006
    """Settings whose value is out of range, each refused in one line naming it (`data.batch_size must be ...`);
    None (a default still to be worked out) passes."""
    for name, value in at_least_1.items():
        if value is not None and value < 1:
            raise ConfigError(f"{section}.{name} must be at least 1, got {value}")
    for name, value in at_least_0.items():
        if value is not None and value < 0:
            raise ConfigError(f"{section}.{name} must be 0 or more, got {value}")
    for name, value in fractions.items():
        if not 0 < value < 1:
            raise ConfigError(f"{section}.{name} must be between 0 and 1, got {value}")


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal other than Ctrl-C (SIGTERM: `kill`, a scheduler's timeout). A
    KeyboardInterrupt, so every place that cleans up after a Ctrl-C does the same for it."""

    def __init__(self, signal_name: str = "SIGTERM", detail: str = ""):
        super().__init__(f"{signal_name} {detail}".strip())
        self.signal_name = signal_name
