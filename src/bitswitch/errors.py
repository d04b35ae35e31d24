"""The one exception type users see.

Every error caused by user input (a model spec, a profile, a data file, a config value) is raised
as :class:`BitswitchError` with a one-line message that names the input and the fix. The CLI turns
it into one line on stderr and exit code 2; library users can catch it like a ``ValueError``.
"""


class BitswitchError(ValueError):
    """A user-input error with a one-line, actionable message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
