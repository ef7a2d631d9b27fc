"""The exception that means "bad input" (hand-written plumbing).

:class:`UsageError` is raised for input a user can fix: an option out of range, two options that
contradict each other, a missing, truncated or foreign file, a data root that is not there. The command
line prints its message on one line and exits with status 2. Any other exception is a bug — ours or a
library's — and the command line lets it through with its traceback, so an internal error never looks
like a usage error.

It subclasses ``ValueError`` so that library callers who catch ``ValueError`` keep working.
"""


class UsageError(ValueError):
    """Bad input the user can fix; the message names the argument and what is allowed.

    ``option``, when known, is the name of the argument at fault (a field name such as ``"eta"``, or
    ``"grid.eta"`` inside a nested option); the command line turns it into the flag the user typed.
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option
