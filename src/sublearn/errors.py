"""One exception type for problems a user can fix.

The CLI turns a `SublearnError` into a one-line message and exit code 2; anything else is a
bug and keeps its traceback.
"""

from pydantic import ValidationError


class SublearnError(Exception):
    """Bad input or environment: a message that names the file, line or field at fault."""


def first_field_error(e: ValidationError) -> tuple[str, str]:
    """The first error of a pydantic validation as (dotted field, message): the field is ""
    for a check of the whole model. Every one-line config or file error is built from it."""
    first = e.errors()[0]
    return ".".join(str(x) for x in first["loc"]), first["msg"]
