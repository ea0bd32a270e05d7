"""User-facing errors: a mistake in the user's input, reported as one line, never a traceback."""

import errno
import functools
import sys

# OSErrors that are the machine's state, not a bug: reported in one line like a UserError.
DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENAMETOOLONG, errno.EFBIG}


class OneLine:
    """What UserError and TrainingInterrupted share: a message entry points print as `error: <message>`, and the
    process's exit status (exit_on_user_error)."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UserError(OneLine, Exception):
    """Bad input from the user (a file, a config value, a checkpoint). Entry points print it as one line."""


class FailedTrial(UserError):
    """A run whose settings turned out bad (not mistyped): in a sweep it is a result, not the end of the sweep."""


class TrainingDiverged(FailedTrial):
    """The loss stopped being a finite number: nothing after that step is worth keeping."""


class OverParamBudget(FailedTrial):
    """The model is bigger than `max_params` allows (a search that must stay within a parameter count)."""


class TrainingInterrupted(OneLine, BaseException):
    """Ctrl-C or SIGTERM: the run stopped early on purpose, with its last checkpoint saved. Entry points print it
    as one line, like a UserError.

    A BaseException, as KeyboardInterrupt is, and for the same reason: the signal handlers raise it wherever the
    main thread happens to be, often inside a library, and a library's broad `except Exception` must not catch it.
    As an Exception it did: Ctrl-C during the final report landed in TensorBoard's add_scalar, and Lightning's
    logger rewrapped it as "ValueError: you tried to log 2.86 which is currently not supported" (a traceback,
    exit 1). Not a KeyboardInterrupt: Lightning's fit turns that into sys.exit(1); any other BaseException it
    re-raises after its on_exception hooks."""

    exit_code = 130  # the shell's convention for "ended by SIGINT"


def exit_on_user_error(func):
    """Run an entry point; turn a UserError or TrainingInterrupted into `error: <message>` on stderr and a non-zero
    exit status."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (UserError, TrainingInterrupted) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        except OSError as err:
            if err.errno not in DISK_ERRORS:
                raise
            print(f"error: cannot write {err.filename or 'the output'}: {err.strerror}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:  # Ctrl-C in sample.py / eval.py (train.py has its own handlers, for each phase)
            print("error: interrupted (Ctrl-C); nothing was written", file=sys.stderr)
            sys.exit(130)

    return wrapper
