"""One exception type for problems a user can fix.

The CLI turns a `SublearnError` into a one-line message and exit code 2; anything else is a
bug and keeps its traceback.
"""


class SublearnError(Exception):
    """Bad input or environment: a message that names the file, line or field at fault."""
