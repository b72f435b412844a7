"""Errors that the command line turns into exit codes.

UsageError -> exit 2 with one line that names the file/field/value and what was expected.
EndpointFailed -> exit 2 too: an external service (a generation endpoint) failed mid-stage.
CheckFailed -> exit 1 (a safety metric regressed).
"""


class UsageError(Exception):
    exit_code = 2


class EndpointFailed(UsageError):
    """An endpoint that answered at the start stopped answering (or failed) mid-stage. A
    subclass so that the stage writing rows can say what it kept: the backend only knows the
    request, not how many rows are already in the database."""


class CheckFailed(Exception):
    exit_code = 1
