"""How each language of the code domain writes a function, a method and a class skeleton.

Tasks (`code_tasks`) are language-neutral: a name, typed parameters, a doc sentence and a
body per language written with 4-space indentation. A `Language` renders them with its own
syntax, doc-comment style, type names, indentation and naming convention, so one task yields
the same function in Python, JavaScript, Go and Ruby.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

DOC_WIDTH = 72
TODO = "TODO: implement"

# Language-neutral type tags -> each language's spelling (doc comments for the untyped ones).
_TYPES: dict[str, dict[str, str]] = {
    "python": {"int": "int", "float": "float", "str": "str", "bool": "bool",
               "ints": "list[int]", "strs": "list[str]", "counts": "dict[str, int]"},
    "javascript": {"int": "number", "float": "number", "str": "string", "bool": "boolean",
                   "ints": "number[]", "strs": "string[]", "counts": "Object<string, number>"},
    "go": {"int": "int", "float": "float64", "str": "string", "bool": "bool",
           "ints": "[]int", "strs": "[]string", "counts": "map[string]int"},
    "ruby": {"int": "Integer", "float": "Float", "str": "String", "bool": "Boolean",
             "ints": "Array<Integer>", "strs": "Array<String>",
             "counts": "Hash{String => Integer}"},
}

Params = Sequence[tuple[str, str]]  # (name, type tag)


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(w.capitalize() for w in rest)


def _wrap(text: str, prefix: str) -> list[str]:
    return [prefix + line for line in textwrap.wrap(text, DOC_WIDTH)]


def _docstring(text: str, pad: str) -> list[str]:
    """A Python docstring at indentation `pad`, closed on its last line."""
    lines = [pad + line for line in textwrap.wrap(text, DOC_WIDTH)]
    lines[0] = pad + '"""' + lines[0][len(pad):]
    lines[-1] += '"""'
    return lines


@dataclass(frozen=True)
class Language:
    key: str  # the fence tag and the key of _TYPES
    name: str  # as a prompt names it
    unit: str  # one level of indentation
    frameworks: tuple[str, ...]  # how a test task may ask for tests
    class_word: str = "class"  # what a class task calls the skeleton (Go has types)

    def ident(self, snake: str) -> str:
        """A function, method or variable name in this language's convention."""
        return camel(snake) if self.key in ("javascript", "go") else snake

    def type(self, tag: str) -> str:
        return _TYPES[self.key][tag]

    def indent(self, body: str, levels: int) -> list[str]:
        """`body` (written with 4-space steps) re-indented in this language's unit."""
        out = []
        for line in body.splitlines():
            stripped = line.lstrip(" ")
            depth = (len(line) - len(stripped)) // 4 + levels
            out.append(self.unit * depth + stripped if stripped else "")
        return out

    def callable(self, name: str, params: Params, returns: str | None, doc: str,
                 body: str | None, owner: str | None = None) -> list[str]:
        """A function, or a method of class `owner`, with its doc comment; `body` None
        leaves a TODO in its place."""
        fn = self.ident(name)
        inner = 1 if owner and self.key != "go" else 0  # Go methods sit at the top level
        pad = self.unit * inner
        todo = {"python": f"# {TODO}\n...", "ruby": f"# {TODO}"}.get(self.key, f"// {TODO}")
        lines_body = self.indent(body if body is not None else todo, inner + 1)
        names = [self.ident(p) for p, _ in params]
        if self.key == "python":
            args = ", ".join(["self"] * bool(owner)
                             + [f"{n}: {self.type(t)}" for n, (_, t) in zip(names, params)])
            ret = self.type(returns) if returns else "None"
            return [f"{pad}def {fn}({args}) -> {ret}:", *_docstring(doc, pad + self.unit),
                    *lines_body]
        if self.key == "javascript":
            tags = [f"@param {{{self.type(t)}}} {n}" for n, (_, t) in zip(names, params)]
            if returns:
                tags.append(f"@returns {{{self.type(returns)}}}")
            head = f"{pad}{fn}(" if owner else f"{pad}function {fn}("
            return [f"{pad}/**", *_wrap(doc, f"{pad} * "), *(f"{pad} * {t}" for t in tags),
                    f"{pad} */", head + ", ".join(names) + ") {", *lines_body, f"{pad}}}"]
        if self.key == "go":
            args = ", ".join(f"{n} {self.type(t)}" for n, (_, t) in zip(names, params))
            recv = f"({owner[0].lower()} *{owner}) " if owner else ""
            ret = f" {self.type(returns)}" if returns else ""
            return [*_wrap(doc, "// "), f"func {recv}{fn}({args}){ret} {{", *lines_body, "}"]
        tags = [f"@param {n} [{self.type(t)}]" for n, (_, t) in zip(names, params)]
        if returns:
            tags.append(f"@return [{self.type(returns)}]")
        sig = f"{pad}def {fn}" + (f"({', '.join(names)})" if names else "")
        return [*_wrap(doc, f"{pad}# "), *(f"{pad}# {t}" for t in tags), sig, *lines_body,
                f"{pad}end"]

    def class_(self, name: str, doc: str, store: str, methods: Sequence[list[str]]) -> list[str]:
        """A class keeping a string -> integer map in field `store`, with rendered methods
        (from `callable(..., owner=name)`)."""
        u = self.unit
        between: list[str] = []
        for m in methods:
            between += ["", *m]
        if self.key == "python":
            return [f"class {name}:", *_docstring(doc, u), "",
                    f"{u}def __init__(self) -> None:",
                    f"{u}{u}self.{store}: dict[str, int] = {{}}", *between]
        if self.key == "javascript":
            return [*_wrap(doc, "// "), f"class {name} {{", f"{u}constructor() {{",
                    f"{u}{u}this.{store} = new Map();", f"{u}}}", *between, "}"]
        if self.key == "go":
            return [*_wrap(doc, "// "), f"type {name} struct {{", f"{u}{store} map[string]int",
                    "}", "", f"// new{name} returns an empty {name}.",
                    f"func new{name}() *{name} {{",
                    f"{u}return &{name}{{{store}: make(map[string]int)}}", "}", *between]
        return [*_wrap(doc, "# "), f"class {name}", f"{u}def initialize",
                f"{u}{u}@{store} = {{}}", f"{u}end", *between, "end"]


LANGUAGES: tuple[Language, ...] = (
    Language("python", "Python", "    ", ("pytest", "the unittest module")),
    Language("javascript", "JavaScript", "  ", ("Jest", "node:test and node:assert")),
    Language("go", "Go", "\t", ("the testing package", "table-driven tests"), "type"),
    Language("ruby", "Ruby", "  ", ("Minitest", "RSpec")),
)
