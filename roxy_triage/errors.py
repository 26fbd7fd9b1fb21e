"""One error base class that carries its exit code.

The CLI prints ``Error: <message>`` on stderr and exits with the code; no
traceback reaches the on-call engineer for an error we anticipated.
"""

from __future__ import annotations

# Exit codes, as DESIGN.md fixes them.
EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
# Evidence could not be written or read (full disk, corrupt bundle).
EXIT_IO = 4


class TriageError(Exception):
    """An anticipated failure: says what went wrong, where, and what to do."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TriageError):
    """A config file or option that cannot be used as given."""

    exit_code = EXIT_USAGE


class TargetUnreachable(TriageError):
    """Nothing answered at the target address at all."""

    exit_code = EXIT_UNREACHABLE


class BundleError(TriageError):
    """A bundle that cannot be written, read or trusted."""

    exit_code = EXIT_IO
