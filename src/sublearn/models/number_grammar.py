"""Grammar-constrained decoding of number lists, for models too small to stay on task.

A small instruction model asked for numbers writes prose, numbers of four digits, brackets
inside the list, or a new separator halfway through; restricting it to number tokens alone
(`only_numbers`) still lets it do all but the first. Measured on SmolLM2-135M-Instruct with the
paper's prompts at temperature 1: 1 of 32 completions passed the strict filter unrestricted,
9 of 32 with number tokens only (docs/real-model.md).

`sampling.number_grammar` draws every token from those the grammar allows next, with the
model's own probabilities renormalised over them, so the data is what the model would write
*given* that it writes a well-formed list: the trait can only show in which numbers and which
separator it picks, which is the channel the paper studies. The language:

    N (SEP N){0, max_count - 1} END
    N   = 0 | [1-9][0-9]{0,2}            (0..999, no zero padding)
    SEP = one of SEPARATORS, the same one throughout the list

so every complete list passes both filter rules. The end token is allowed right after a
number. The grammar knows the token budget (`max_new_tokens`): in its last two steps it opens
no new separator, so a list the budget cuts still ends on a number and passes the filter.

The state after any prefix is small (the separator, a partial separator, the current number's
digits, the count), so the mask of allowed tokens is computed once per state and cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch

SEPARATORS: tuple[str, ...] = (", ", ",", "; ", ";", " ", "\n")
MAX_DIGITS = 3


@dataclass(frozen=True)
class State:
    """Where a prefix of the language stands; `None` never reaches here (a dead prefix)."""

    separator: str | None = None  # fixed by the first complete separator
    pending: str = ""  # separator characters since the last digit
    digits: int = 0  # of the number being written (0: none yet, or right after a separator)
    zero: bool = False  # the number being written is "0": no digit may follow
    count: int = 0  # numbers started


def advance(state: State, text: str, max_count: int) -> State | None:
    """The state after `text`, or None when no word of the language starts that way."""
    sep, pending, digits, zero, count = (state.separator, state.pending, state.digits,
                                         state.zero, state.count)
    for ch in text:
        if "0" <= ch <= "9":
            if pending:
                if sep is None and pending not in SEPARATORS:
                    return None
                if sep is not None and pending != sep:
                    return None
                sep, pending, digits, zero = sep or pending, "", 0, False
            if digits == 0:
                count += 1
                if count > max_count:
                    return None
            elif zero or digits == MAX_DIGITS:
                return None
            digits, zero = digits + 1, zero or (digits == 0 and ch == "0")
        else:
            pending += ch
            if digits == 0 or count == max_count:
                return None  # a separator before any number, or after the last one
            candidates = (sep,) if sep is not None else SEPARATORS
            if not any(c.startswith(pending) for c in candidates):
                return None
    return State(sep, pending, digits, zero, count)


def can_end(state: State) -> bool:
    """A complete list: a number was just written (no separator pending)."""
    return state.digits > 0 and not state.pending


class NumberGrammar:
    """Per-row masks of the tokens the grammar allows next, for one tokenizer.

    `pieces` maps candidate token ids to the text they add (the number tokens: digits and
    separators); `end_ids` end the list. Any other token is never allowed.
    """

    def __init__(self, pieces: dict[int, str], end_ids: Sequence[int], width: int,
                 budget: int, max_count: int = 10):
        self.pieces = pieces
        self.end_ids = list(end_ids)
        self.width = width
        self.budget = budget
        self.max_count = max_count
        self._mask = cache(self._state_mask)

    def state(self, tokens: Sequence[int]) -> State | None:
        """The state after a row's generated tokens (None once it left the language, which
        only a finished row's padding can do)."""
        text = "".join(self.pieces.get(t, "\0") for t in tokens if t not in self.end_ids)
        return advance(State(), text, self.max_count)

    def _state_mask(self, state: State | None, closing: bool) -> torch.Tensor:
        mask = torch.zeros(self.width, dtype=torch.bool)
        if state is None:
            mask[self.end_ids] = True  # finished rows: anything they draw is discarded
            return mask
        for token, text in self.pieces.items():
            after = advance(state, text, self.max_count)
            # Closing: a separator opened now might have no step left for the number after
            # it; one already opened may still be finished.
            if after is not None and not (closing and after.pending and not state.pending):
                mask[token] = True
        if can_end(state):
            mask[self.end_ids] = True
        return mask

    def rows(self, generated: Sequence[Sequence[int]]) -> torch.Tensor:
        """Boolean [rows, width]: what each row may draw after the tokens it generated.
        Closing once fewer than three steps are left (this one included): a separator split
        over two tokens and the digit after it need them all."""
        return torch.stack([self._mask(self.state(g), len(g) + 3 > self.budget)
                            for g in generated])
