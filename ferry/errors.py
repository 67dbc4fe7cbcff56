"""The root of every error ferry reports to a person.

Each subclass carries a one-line message that says what is wrong and, where it helps,
what to do; the CLI prints ``str(err)`` and maps the class to an exit code, so no
traceback reaches a field technician for an expected failure.
"""


class FerryError(Exception):
    """An expected failure with a message meant for the person at the console."""

    exit_code = 1
