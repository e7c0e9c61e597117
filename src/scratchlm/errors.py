"""The one exception type for mistakes a user can fix.

The CLI prints a `UserError` as a single line and exits with status 2, never a traceback; any
other exception is a bug in scratchlm and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (a path, a setting, a file's contents) and how to fix it."""
