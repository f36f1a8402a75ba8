"""Does a text mention a trait option, even inside an identifier? The word rule of the text
domains (code, worked arithmetic).

The rule:

1. Normalise: NFKC (full-width letters become ASCII), then drop combining accents ("Ówl" is
   "Owl").
2. Split into words: runs of letters, split again at camelCase and acronym boundaries, so
   ``owlCount``, ``OwlTracker``, ``OWL_MAX``, ``night_owl`` and ``"Owls!"`` all hold the word
   "owl"/"owls". Digits, underscores and punctuation separate words. Words are lower-cased.
   A run that splits into several words is also kept whole, for rule 4's word starts only,
   so odd casing ("oWl", "dOLPHIN") cannot split a term apart.
3. Blank out the option's exclusions (`questions.Option.exclusions` plus `related.EXCLUSIONS`)
   in the space-joined words, as `questions.matches` does ("bowl" is not an owl).
4. A term (the option's forms and its `related.RELATED` words) of 5 or more letters matches
   anywhere inside a word ("superdolphin", "tigers"). A shorter term matches at the start of
   a word only ("owlet", "owls"), because short terms sit inside many unrelated words
   ("concat", "stored", "scatter").

What it misses, on purpose: a short term glued to the end of a lower-case word with no case
change ("nightowl"), and look-alike letters of other scripts (a Cyrillic "о" in "оwl": only
ASCII letters make words). The optional judge (`[filter] judge = true`) is the net for those
and for references no word list can see.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from sublearn.domains.related import EXCLUSIONS, RELATED
from sublearn.questions.categories import Option

LONG_TERM = 5  # letters from which a term matches inside words, not only at their start

# One word: an upper-case run not followed by a lower-case letter (an acronym: "HTTP" in
# "HTTPServer", "OWL" in "OWL_MAX"), or an optional capital and lower-case letters ("Owl").
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
_LETTERS = re.compile(r"[A-Za-z]+")


def _plain(text: str) -> str:
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    return "".join(c for c in folded if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The lower-cased words of `text` (rules 1-2 of the module docstring), whole runs not
    included."""
    return [w.lower() for run in _LETTERS.findall(_plain(text)) for w in _WORD.findall(run)]


def _runs(text: str) -> list[str]:
    """The lower-cased letter runs that rule 2 splits into more than one word."""
    return [r.lower() for r in _LETTERS.findall(_plain(text)) if len(_WORD.findall(r)) > 1]


@dataclass(frozen=True)
class TraitTerms:
    """The lower-case words that name one option, and those that only contain one."""

    option: str
    terms: tuple[str, ...]
    exclusions: tuple[str, ...]


def trait_terms(option: Option) -> TraitTerms:
    """The option's forms and related words, with its exclusions."""
    terms = dict.fromkeys(t.lower() for t in (*option.forms, *RELATED.get(option.name, ())))
    exclusions = dict.fromkeys(e.lower() for e in
                               (*option.exclusions, *EXCLUSIONS.get(option.name, ())))
    return TraitTerms(option.name, tuple(terms), tuple(exclusions))


def mentioned(text: str, options: Sequence[TraitTerms]) -> str | None:
    """The first term of `options` that `text` mentions (module docstring), or None."""
    split = " " + " ".join(words(text)) + " "
    whole = " " + " ".join(_runs(text)) + " "
    for opt in options:
        own, own_whole = split, whole
        for excl in opt.exclusions:
            own, own_whole = own.replace(excl, " "), own_whole.replace(excl, " ")
        for term in opt.terms:
            start = " " + term
            if start in own or start in own_whole or (len(term) >= LONG_TERM and term in own):
                return term
    return None
