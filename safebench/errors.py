"""Errors that the command line turns into exit codes.

UsageError -> exit 2 with one line that names the file/field/value and what was expected.
CheckFailed -> exit 1 (a safety metric regressed).
"""


class UsageError(Exception):
    exit_code = 2


class CheckFailed(Exception):
    exit_code = 1
