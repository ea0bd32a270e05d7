"""User-facing errors: a mistake in the user's input, reported as one line, never a traceback."""

import functools
import sys


class UserError(Exception):
    """Bad input from the user (a file, a config value, a checkpoint). Entry points print it as one line."""


def exit_on_user_error(func):
    """Run an entry point; turn a UserError into `error: <message>` on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
