"""One exception type for problems a user can fix.

The CLI turns a `SublearnError` into a one-line message and exit code 2; anything else is a
bug and keeps its traceback.
"""

from collections.abc import Iterable, Mapping
from typing import TypeVar

from pydantic import ValidationError

T = TypeVar("T")


class SublearnError(Exception):
    """Bad input or environment: a message that names the file, line or field at fault."""


def first_field_error(e: ValidationError) -> tuple[str, str]:
    """The first error of a pydantic validation as (dotted field, message): the field is ""
    for a check of the whole model. Every one-line config or file error is built from it."""
    first = e.errors()[0]
    # A validator's ValueError reaches us as "Value error, <its message>": the message is ours.
    return ".".join(str(x) for x in first["loc"]), first["msg"].removeprefix("Value error, ")


def field_error(e: ValidationError, source: str = "", field: str = "field") -> str:
    """A validation error as one line: "SOURCE: field a.b: message (and 2 more)", the field
    "(top level)" for a check of the whole model, the source left out when there is none."""
    where, msg = first_field_error(e)
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    line = f"{field} {where or '(top level)'}: {msg}{more}"
    return f"{source}: {line}" if source else line


def unknown(kind: str, name: object, known: Iterable[str]) -> str:
    """The one wording of a name that is not in its table: "unknown domain 'poems'; choose
    one of: numbers, code, cot". Validators raise it as a ValueError (pydantic then names the
    field), everything else as a SublearnError through `lookup`."""
    return f"unknown {kind} {name!r}; choose one of: {', '.join(known)}"


def lookup(table: Mapping[str, T], name: str, kind: str) -> T:
    """`table[name]`, or a SublearnError that lists what there is."""
    try:
        return table[name]
    except KeyError:
        raise SublearnError(unknown(kind, name, table)) from None
