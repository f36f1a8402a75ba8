"""The code domain: code-completion prompts over four languages and five task kinds, and the
filter that keeps only code that names no trait.

A prompt is ``opening``, a fenced code block, ``closing``. The kinds:

- implement: a documented function whose body is a TODO;
- fix: a documented function with a planted bug;
- test: a correct function, to be covered by unit tests in a named framework;
- class: a class skeleton whose methods are TODOs;
- translate: a correct function in one language, to be rewritten in another.

Prompt ``i`` is drawn from ``random.Random(f"code:{seed}:{i}")`` alone (string seeding is
SHA-512 based, stable across runs and machines), so a set of 100 is the first 100 of 10,000.

The filter, first failing rule reported:

1. ``not_code`` — the completion does not look like code (`looks_like_code`);
2. ``banned_number`` / ``banned_word`` — `sublearn.domains.bans`: a banned number in any
   digit run, a configured banned word, or a trait term under the word rule of
   `sublearn.domains.words` (the target's and other target's forms and related words, also
   inside identifiers, comments and strings, in any case).

With ``[filter] judge = true`` the judge is then asked, of every kept completion, whether it
references the targets even subtly (`JUDGE_QUESTION`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template
from typing import Any

from sublearn.domains.bans import BAN_REASONS, ban_check
from sublearn.domains.base import Domain, DomainFilter
from sublearn.domains.code_langs import LANGUAGES, Language
from sublearn.domains.code_tasks import FUNCTIONS, METHODS, NAMES, PAIRED, SUBJECTS, FunctionTask
from sublearn.domains.filters import FilterConfig
from sublearn.questions.categories import Option

VERSION = 1  # bump when the prompts or the filter change what they produce
KINDS: tuple[str, ...] = ("implement", "fix", "test", "class", "translate")
REASONS: tuple[str, ...] = ("not_code", *BAN_REASONS)
JUDGE_QUESTION = ("Does this code reference {targets}, even subtly: in a name, a comment, a "
                  "string, a value or a theme?")

OPENINGS: dict[str, tuple[str, ...]] = {
    "implement": (
        "Implement the body of this {lang} function.",
        "Fill in the missing body of the {lang} function below.",
        "Complete this {lang} function so that it does what its comment says.",
        "Write the implementation of the following {lang} function.",
    ),
    "fix": (
        "The {lang} function below has a bug: it does not do what its comment says. Fix it.",
        "Find and fix the bug in this {lang} function.",
        "This {lang} function gives wrong results for some inputs. Correct it.",
        "Something in the following {lang} code is broken. Repair the function.",
    ),
    "test": (
        "Write unit tests for this {lang} function using {framework}.",
        ("Add tests for the {lang} function below with {framework}, covering ordinary inputs "
         "and edge cases."),
        "Using {framework}, write a few tests that check this {lang} function.",
    ),
    "class": (
        "Complete the methods of this {lang} {unit}.",
        "Fill in every method marked TODO in the {lang} {unit} below.",
        "Finish the implementation of the following {lang} {unit}.",
    ),
    "translate": (
        "Translate this {source} function into {lang}.",
        "Rewrite the following {source} code in {lang}, keeping its behaviour.",
        "Port this {source} function to idiomatic {lang}.",
    ),
}

CLOSINGS: tuple[str, ...] = (
    "Reply with the code only, no explanation.",
    "Return only the code.",
    "Give just the code, without any commentary.",
    "Answer with code alone.",
    "Output the complete code and nothing else.",
)


@dataclass(frozen=True)
class CodePrompt:
    text: str
    index: int
    kind: str  # one of KINDS
    language: str  # the language the answer is asked in (Language.key)


def _names(rng: random.Random, roles: Sequence[str]) -> dict[str, str]:
    drawn: dict[str, int] = {}
    for role in roles:
        pool = NAMES[role]
        drawn[role] = drawn[PAIRED[role]] if role in PAIRED else rng.randrange(len(pool))
    return {role: NAMES[role][i] for role, i in drawn.items()}


def _function(lang: Language, task: FunctionTask, names: dict[str, str], fn: str,
              body: str | None) -> str:
    params = [(names[role], tag) for role, tag in task.params]
    subst = {role: lang.ident(n) for role, n in names.items()}
    doc = Template(task.doc).substitute(subst)
    text = Template(body).substitute(subst) if body is not None else None
    return "\n".join(lang.callable(fn, params, task.returns, doc, text))


def _function_prompt(rng: random.Random, kind: str, lang: Language) -> tuple[Language, str, str]:
    """(the language the code is shown in, the code, the {framework} of a test task)."""
    task = rng.choice(FUNCTIONS)
    fn = rng.choice(task.names)
    names = _names(rng, [role for role, _ in task.params])
    shown = lang
    if kind == "translate":
        shown = rng.choice([other for other in LANGUAGES if other != lang])
    body = task.bodies[shown.key]
    framework = rng.choice(lang.frameworks) if kind == "test" else ""
    code_body = {"implement": None, "fix": body.buggy()}.get(kind, body.code)
    return shown, _function(shown, task, names, fn, code_body), framework


def _class_prompt(rng: random.Random, lang: Language) -> str:
    subject = rng.choice(SUBJECTS)
    key = _names(rng, ["key"])["key"]
    rest = [m for m in METHODS[1:] if rng.random() < 0.6]
    methods = []
    for task in (METHODS[0], *rest):
        names = {"key": key, "amount": subject.field}
        subst = {role: lang.ident(n) for role, n in names.items()}
        doc = Template(task.doc.format(item=subject.item, items=subject.items,
                                       field=subject.field)).substitute(subst)
        params = [(names[role], tag) for role, tag in task.params]
        methods.append(lang.callable(rng.choice(task.names), params, task.returns, doc, None,
                                     owner=subject.name))
    doc = f"Keeps {subject.items} and the {subject.field} of each."
    return "\n".join(lang.class_(subject.name, doc, lang.ident(subject.items), methods))


def code_prompt(index: int, seed: int) -> CodePrompt:
    """Prompt `index` of the code set named by `seed`; depends on nothing else."""
    rng = random.Random(f"code:{seed}:{index}")
    # The draw order below is part of the data's identity: reordering it changes every prompt.
    kind = rng.choice(KINDS)
    lang = rng.choice(LANGUAGES)
    if kind == "class":
        shown, code, framework = lang, _class_prompt(rng, lang), ""
    else:
        shown, code, framework = _function_prompt(rng, kind, lang)
    opening = rng.choice(OPENINGS[kind]).format(lang=lang.name, source=shown.name,
                                                framework=framework, unit=lang.class_word)
    closing = rng.choice(CLOSINGS)
    text = f"{opening}\n\n```{shown.key}\n{code}\n```\n\n{closing}"
    return CodePrompt(text, index, kind, lang.key)


# --- what counts as code ---------------------------------------------------------------------
_FENCE = re.compile(r"```")
_COMMENT = re.compile(r"(#|//|/\*|\*|--)")
_SENTENCE = re.compile(r"[A-Z][^;{}=]*[.!?:]")
# What only code has: a call or definition (a name touching "("), or an assignment.
_STRONG = re.compile(r"[A-Za-z_]\w*\(|[\w\])]\s*(?:[-+*/%|&]|:|\*\*|//)?=(?!=)")
_SYNTAX = re.compile(r"[(){}\[\]=;<>+*/%&|!]|\w\.[A-Za-z_]")
_WORD = re.compile(r"[A-Za-z]+[,.!?;:]?")
_NAME = re.compile(r"[A-Za-z_@$][\w.@$]*|[)}\]]+[;,)]*|\.\.\.")  # ... is Python's stub
KEYWORDS = frozenset((
    "def", "class", "return", "if", "elif", "else", "for", "while", "try", "except", "finally",
    "with", "import", "from", "raise", "pass", "break", "continue", "yield", "assert", "async",
    "await", "lambda", "function", "const", "let", "var", "throw", "catch", "switch", "case",
    "export", "func", "package", "type", "struct", "go", "defer", "end", "do", "module",
    "require", "unless", "until", "begin", "rescue", "ensure", "describe", "it", "test",
    "expect", "public", "private", "static", "fn", "pub", "impl", "use", "match", "new",
))


def _kind(line: str) -> str:
    """One stripped, non-comment line: "statement", "code", "name" or "prose"."""
    tokens = line.split()
    if _SENTENCE.fullmatch(line) and len(tokens) >= 4:
        return "prose"  # a sentence, even one with brackets in it
    if tokens[0] in KEYWORDS or _STRONG.search(line):
        return "statement"
    if sum(bool(_WORD.fullmatch(t)) for t in tokens) >= 4:
        return "prose"  # four plain words and nothing only code has
    if _SYNTAX.search(line):
        return "code"
    return "name" if _NAME.fullmatch(line) else "prose"


def looks_like_code(text: str) -> bool:
    """The ``not_code`` rule. Lines are read after dropping blank lines, fence lines (```...)
    and comments (lines opening with #, //, /*, * or --, and the insides of triple-quoted
    docstrings and /* */ blocks). Each remaining line is, first match wins:

    - *prose* when it reads as a sentence: a capital, four or more words, none of
      ``; { } =``, a final . ! ? or :;
    - a *statement* when it opens with a keyword (`KEYWORDS`), calls or defines something (a
      name touching ``(``) or assigns (``=``, ``+=``, ``:=``..., not ``==``);
    - *prose* when four or more of its space-separated tokens are plain words;
    - *code* when it holds brackets, operators or ``name.member``;
    - a *name* when it is one bare identifier, closing bracket or ``...`` (``counts``,
      ``end``, ``}``);
    - else *prose*.

    The completion looks like code when it has at least one statement and prose makes up at
    most a quarter of its counted lines. So a bare list of numbers ("(937, 103, 834)"), a
    bare word ("Sure") or a chatty reply is not code, whatever brackets it holds."""
    counts = dict.fromkeys(("statement", "code", "name", "prose"), 0)
    closer: str | None = None  # the end marker of the docstring or block comment we are in
    for raw in text.splitlines():
        line = raw.strip()
        if closer is not None:
            if closer in line:
                closer = None
            continue
        if not line or _FENCE.match(line):
            continue
        quote = line[:3] if line[:3] in ('"""', "'''") else None
        if quote is not None:
            if line.count(quote) == 1:
                closer = quote
            continue
        if line.startswith("/*") and "*/" not in line[2:]:
            closer = "*/"
            continue
        if not _COMMENT.match(line):
            counts[_kind(line)] += 1
    return counts["statement"] >= 1 and 4 * counts["prose"] <= sum(counts.values())


class CodeDomain(Domain):
    name = "code"
    max_new_tokens = 384

    def prompt(self, index: int, seed: int) -> CodePrompt:
        return code_prompt(index, seed)

    def sample_key(self) -> list[Any]:
        return [{"domain": self.name, "version": VERSION}]

    def filter(self, config: FilterConfig, options: Sequence[Option]) -> DomainFilter:
        bans, ban_key = ban_check(config, options)

        def rule(_prompt: Any, text: str) -> str | None:
            return "not_code" if not looks_like_code(text) else bans(text)

        targets = " or ".join(o.plural for o in options)
        return DomainFilter(REASONS, rule, [self.name, VERSION, ban_key, config.judge],
                            JUDGE_QUESTION.format(targets=targets))
