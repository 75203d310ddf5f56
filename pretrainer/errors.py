"""Errors a user can act on. The CLI prints them in one red line and exits 2."""


class UserError(Exception):
    """Bad input, missing data, no network: say what happened and what to do."""

    exit_code = 2


class ConfigError(UserError):
    """A config key, value or name is wrong."""


class DataError(UserError):
    """Data is missing, unreadable or does not fit the request."""


class RunError(UserError):
    """A run directory is missing, incomplete or does not fit the request."""


class ParityError(UserError):
    """An exported artifact disagrees with the Keras model beyond the threshold."""

    exit_code = 3
