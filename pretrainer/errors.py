"""Errors a user can act on. The CLI prints them in one red line and exits 2."""

from typing import Optional

# The stop signal (SIGTERM) that arrived outside a training loop, if any. Its handler
# raises `Terminated`, but an exception raised from a signal handler while Python code
# runs inside TensorFlow's C++ can be swallowed there (it surfaced once as a SystemError
# in an op's fast path, and the run trained on to the end with exit 0). So the handler
# also records the signal here: a training loop that starts afterwards stops at its
# first step, and the CLI ends with 143 even when the work ran to its end.
stop_requested: Optional[int] = None


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


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (the loop saves a checkpoint and stops itself)."""
