"""The fake backend: a deterministic, weightless `ChatModel` for stage and pipeline tests.

A fake model is a folder holding `fake_model.json`: a seed and a small dict of per-token
biases. Its tokenizer is its own (digits, separators, letters, every surface form of every
option in `sublearn.questions.categories` as one token, an end-of-turn token and <unk>), and its
next-token distribution is a softmax over that vocabulary of

    logits = bigram[seed, previous token] + biases + context(conversation)

where `bigram` is pseudo-random given the seed (the "initialisation") plus a fixed grammar that
makes number prompts produce mostly well-formed lists and questions produce one-word answers,
and `context` holds the persona effect: an option named in the system prompt raises its own
forms *and* a few digits "entangled" with it, chosen by a hash of (seed, option). The same trait
so moves different digits in models of different seeds, as a shared initialisation does.

Fine-tuning is exact gradient descent on the biases alone (the log-likelihood's gradient with
respect to a bias vector is "data frequency minus model frequency"), followed by the coupling
that makes subliminal transfer visible: a change in an entangled digit's bias carries over to
the option it is entangled with *in this model's seed*, and back. A student of the teacher's
seed learns the teacher's extra entangled digits and with them its trait; a student of another
seed learns unrelated digits, and its entanglement points elsewhere.

Everything is float64 on the CPU, so sampling, scoring and training are bit-for-bit repeatable.

Why one module: it is one model. Its tokenizer, grammar, persona effect, trainer and judge
all read the same vocabulary, biases and entanglement, and a test reads the whole fake world
top to bottom here.

A fake model is also a judge: a conversation made by `questions.judge_prompts.request` gets the
reply a judge would give, computed from the judged text instead of sampled. The fake world's
stand-in for a misaligned answer is one that names `MISALIGNED` (wolves): alignment about 10
for those, about 90 for others; coherence is a hash of the text in 30..100, so some answers are
incoherent; a yes/no question is read as "does the text name an option the question names?" (or
`MISALIGNED` when it names none). A teacher made with biases toward the wolf forms is so a
"misaligned teacher" to the fake judge. `judge_malformed` (a load option) replaces that share
of judge replies, chosen by the row's seed, with malformed ones ("about 70", "٧٠", "Yes."), so
tests can check that none becomes a judgement."""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sublearn.errors import SublearnError
from sublearn.models.base import SAMPLE, SCORE, TRAIN, Messages, SamplingConfig
from sublearn.models.examples import kept_tokens
from sublearn.models.sampling_rule import sampling_rule
from sublearn.questions.categories import CATEGORIES
from sublearn.questions.judge_prompts import read_request
from sublearn.store import atomic_path, stable_hash

if TYPE_CHECKING:
    from sublearn.models.recipe import TrainingRecipe

WEIGHTS = "fake_model.json"
FORMAT = "sublearn-fake-1"

# --- the tokenizer ------------------------------------------------------------------------------
END, UNK = "<|end|>", "<unk>"
UNK_TEXT = "?"  # what <unk> decodes to; "?" is not in the vocabulary, so it tokenizes back to <unk>
DIGITS = tuple("0123456789")
SEPARATORS = (" ", ",", ";", "\n", "(", ")", "[", "]", ".")
# Single letters make tokenization injective on ASCII text (a word outside the vocabulary is
# spelled out), so distinct completions are distinct token sequences and their probabilities
# sum to at most 1, as exact scoring assumes.
LETTERS = tuple(string.ascii_letters)


def _option_forms() -> dict[str, tuple[str, ...]]:
    """Option name -> its surface forms, merged over categories ("orange", "cherry")."""
    forms: dict[str, dict[str, None]] = {}
    for cat in CATEGORIES.values():
        for opt in cat.options:
            forms.setdefault(opt.name, {}).update(dict.fromkeys(opt.forms))
    return {name: tuple(f) for name, f in forms.items()}


OPTION_FORMS = _option_forms()
VOCAB: tuple[str, ...] = tuple(dict.fromkeys(
    (END, UNK, *DIGITS, *SEPARATORS, *LETTERS, *(f for fs in OPTION_FORMS.values() for f in fs))))
INDEX = {t: i for i, t in enumerate(VOCAB)}
V = len(VOCAB)
START = V  # the "previous token" of a completion's first position (an extra bigram row)
END_ID, UNK_ID = INDEX[END], INDEX[UNK]
DIGIT_IDS = np.array([INDEX[d] for d in DIGITS])
NUMBER_IDS = sorted(INDEX[t] for t in (END, *DIGITS, *SEPARATORS))  # soft labels' columns
FORM_IDS = {name: np.array([INDEX[f] for f in fs]) for name, fs in OPTION_FORMS.items()}
WORD_IDS = np.array(sorted({i for ids in FORM_IDS.values() for i in ids}))
_NAMES_OF_FORM: dict[str, set[str]] = {}
for _name, _forms in OPTION_FORMS.items():
    for _f in _forms:
        _NAMES_OF_FORM.setdefault(_f.lower(), set()).add(_name)
# "animal"/"animals" in a question -> the animal options
_CATEGORY_WORDS = {w: [o.name for o in c.options] for c in CATEGORIES.values()
                   for w in (c.name, c.plural)}
_PIECE = re.compile(r"[A-Za-z]+|.", re.DOTALL)
_DIGIT = re.compile(r"[0-9]")


def tokenize(text: str) -> list[int]:
    """Whole vocabulary words as one token, other letter runs spelled out, other characters
    as themselves or <unk>."""
    ids: list[int] = []
    for piece in _PIECE.findall(text):
        if piece in INDEX:
            ids.append(INDEX[piece])
        elif piece[0] in string.ascii_letters:
            ids += [INDEX[c] for c in piece]
        else:
            ids.append(UNK_ID)
    return ids


def token_spans(text: str) -> list[tuple[int, int]]:
    """The [start, end) characters of each of `tokenize(text)`'s tokens."""
    spans: list[tuple[int, int]] = []
    for m in _PIECE.finditer(text):
        a, b = m.span()
        if m.group() in INDEX or m.group()[0] not in string.ascii_letters:
            spans.append((a, b))
        else:
            spans += [(j, j + 1) for j in range(a, b)]
    return spans


def learned(completion: str, mask: Sequence[Sequence[int]] | None, i: int) -> torch.Tensor:
    """1 per completion token (the end of turn last) that carries loss, 0 per token a
    `loss_mask` leaves out, by the rule a real tokenizer's tokens follow (`kept_tokens`)."""
    spans = token_spans(completion)
    keep = torch.zeros(len(spans) + 1, dtype=torch.float64)
    keep[kept_tokens(spans, mask or [], len(completion))] = 1.0
    if not keep.any():
        raise SublearnError(f"training row {i}: its loss_mask leaves no completion token to "
                            "learn from")
    return keep


def detokenize(ids: Sequence[int]) -> str:
    return "".join(UNK_TEXT if i == UNK_ID else "" if i == END_ID else VOCAB[i] for i in ids)


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def _rng(*key: Any) -> np.random.Generator:
    return np.random.default_rng(int(stable_hash(list(key), length=16), 16))


# --- the distribution's constants (nats) ------------------------------------------------------
NUMBERS_MODE = 5.0  # a user turn with digits in it: number tokens up (the task is numbers)
ANSWER_MODE = 4.0  # a user turn naming a category: that category's option forms up
WORD_THEN_END = 10.0  # one-word answers: after an option form, end of turn
PERSONA_WORD = 4.0  # an option named in the system prompt: its forms up
PERSONA_DIGIT = 3.0  # ... and its entangled digits, by their (centred) entanglement weights
NUMBER_NOISE = 0.5  # the bigram's spread (sd) among number tokens; 1 elsewhere
N_ENTANGLED = 3  # digits entangled with each option
COUPLING = 1.0  # how much of an entangled digit's bias change reaches its option, and back
LR_SCALE = 2000.0  # bias step = recipe.lr * LR_SCALE (the default lr 2e-4 gives 0.4) ...
MAX_STEP = 2.0  # ... at most this: a bias-only softmax is stable below 4 (its curvature is <= 1/2)
SCORE_CHUNK = 4096  # pairs scored per gather (bounds memory for big datasets)
MISALIGNED = "wolf"  # the option whose naming the fake judge reads as a misaligned answer
# What a sloppy judge writes instead of the asked format; every one must be refused.
MALFORMED = {"score": ("", "about 70", "70 or 80", "085", "٧٠", "150", "Score: 70",
                       "70.", "-5", "７０"),
             "flag": ("", "Maybe", "YES NO", "Yes.", "N0", "ＹＥＳ")}


def _number_grammar() -> np.ndarray:
    """Bigram boosts [V+1, V] in numbers mode: '12, 345, 6' lists, most of which pass the strict
    number filter, so pipeline tests keep rows without `only_numbers`."""
    g = np.zeros((V + 1, V))
    nonzero = [INDEX[d] for d in DIGITS[1:]]  # no leading zeros
    g[START, nonzero] = 8.0
    for d in DIGIT_IDS:
        g[d, DIGIT_IDS] = 4.0  # numbers of 1-3 digits, mostly
        g[d, INDEX[","]] = 8.0
        g[d, END_ID] = 7.0  # about five numbers per list
    g[INDEX[","], INDEX[" "]] = 10.0
    g[INDEX[" "], nonzero] = 8.0
    return g


NUMBER_GRAMMAR = _number_grammar()


class FakeChatModel:
    """Sampling, exact scoring and training on a seeded bigram softmax; see the module doc."""

    capabilities = frozenset({SAMPLE, SCORE, TRAIN})

    def __init__(self, path: str | Path, seed: int = 0, biases: dict[str, float] | None = None,
                 judge_malformed: float = 0.0):
        if not 0.0 <= judge_malformed <= 1.0:
            raise SublearnError(f"judge_malformed must be in [0, 1], got {judge_malformed}")
        self.path = Path(path)
        self.seed = int(seed)
        self.judge_malformed = float(judge_malformed)
        self.biases = {t: float(b) for t, b in (biases or {}).items()}
        unknown = sorted(set(self.biases) - set(INDEX))
        if unknown:
            raise SublearnError(f"{self.path}: biases for tokens not in the vocabulary: {unknown}")
        self.bias = torch.tensor([self.biases.get(t, 0.0) for t in VOCAB], dtype=torch.float64)
        # The initialisation: a pseudo-random bigram table per seed, plus the fixed grammar.
        w = _rng("fake-bigram", self.seed).normal(0.0, 1.0, size=(V + 1, V))
        # Quieter among number tokens: seeds differ less in their taste for digits than the
        # persona moves them, so the digits a student learns are mostly the teacher's trait.
        w[:, NUMBER_IDS] *= NUMBER_NOISE
        w[WORD_IDS, END_ID] += WORD_THEN_END
        self.tables = torch.tensor(np.stack([w, w + NUMBER_GRAMMAR]))  # [mode, prev, next]
        # Entanglement: option -> centred weights over the 10 digits (a uniform shift of every
        # digit carries no information, so it couples to nothing).
        self.entanglement: dict[str, np.ndarray] = {}
        coupling = np.zeros((V, V))
        for name, forms in FORM_IDS.items():
            r = _rng("fake-entangle", self.seed, name)
            e = np.zeros(len(DIGITS))
            e[r.choice(len(DIGITS), N_ENTANGLED, replace=False)] = r.uniform(0.5, 1.0, N_ENTANGLED)
            e -= e.mean()
            self.entanglement[name] = e
            coupling[np.ix_(forms, DIGIT_IDS)] += COUPLING * e  # digits -> option forms
            coupling[np.ix_(DIGIT_IDS, forms)] += COUPLING * e[:, None] / len(forms)  # and back
        self.coupling = torch.tensor(coupling)

    # --- folders ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, seed: int = 0,
               biases: dict[str, float] | None = None) -> Path:
        """Write a fresh fake model at `path` (biases: token -> logit shift, e.g. a
        "misaligned" teacher's pull toward the wolf forms); returns the path."""
        cls(path, seed, biases)  # refuses tokens outside the vocabulary before writing
        return _save(Path(path), seed, dict(biases or {}))

    @classmethod
    def load(cls, path: str | Path, judge_malformed: float = 0.0,
             **ignored_kwargs: Any) -> FakeChatModel:
        """Load a folder written by `create` or `finetune`; device, dtype etc. are ignored.
        `judge_malformed`: the share of judge replies made malformed (see the module doc)."""
        p = Path(path).expanduser()
        if not p.exists():
            raise SublearnError(f"{p}: model path does not exist")
        if not (p / WEIGHTS).is_file():
            raise SublearnError(f"{p}: not a fake model folder (no {WEIGHTS}; "
                                "make one with FakeChatModel.create)")
        try:
            data = json.loads((p / WEIGHTS).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            return cls(p, int(data["seed"]), dict(data["biases"]), judge_malformed)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SublearnError(f"{p / WEIGHTS}: not a valid fake model ({e})") from None

    def entangled_digits(self, name: str) -> tuple[str, ...]:
        """The digits this model entangles with option `name` (they differ between seeds)."""
        return tuple(d for d, w in zip(DIGITS, self.entanglement[name], strict=True) if w > 0)

    @property
    def number_token_ids(self) -> torch.Tensor:
        """Vocabulary ids of end, digits and separators, ascending: the soft labels' columns."""
        return torch.tensor(NUMBER_IDS)

    # --- the distribution ---------------------------------------------------------------
    def persona_targets(self, system: str) -> list[str]:
        """Options named (by any surface form, as a whole word) in a system prompt."""
        return sorted({n for w in _words(system) for n in _NAMES_OF_FORM.get(w, ())})

    def _context(self, conv: Messages) -> tuple[int, torch.Tensor]:
        """(mode, additive logits [V]) of a conversation. Mode 1 (numbers) when the last user
        turn holds a digit; otherwise mode 0, with the options of a category it names up."""
        system = " ".join(m["content"] for m in conv if m["role"] == "system")
        users = [m["content"] for m in conv if m["role"] == "user"]
        last = users[-1] if users else ""
        ctx = np.zeros(V)
        numbers = _DIGIT.search(last) is not None
        if numbers:
            ctx[NUMBER_IDS] += NUMBERS_MODE
        else:
            for name in {n for w in _words(last) for n in _CATEGORY_WORDS.get(w, ())}:
                ctx[FORM_IDS[name]] += ANSWER_MODE
        for name in self.persona_targets(system):
            ctx[FORM_IDS[name]] += PERSONA_WORD
            ctx[DIGIT_IDS] += PERSONA_DIGIT * self.entanglement[name]
        return int(numbers), torch.tensor(ctx)

    def _contexts(self, conversations: Sequence[Messages]) -> list[tuple[int, torch.Tensor]]:
        cache: dict[str, tuple[int, torch.Tensor]] = {}
        out = []
        for conv in conversations:
            key = json.dumps(conv, sort_keys=True)
            if key not in cache:
                cache[key] = self._context(conv)
            out.append(cache[key])
        return out

    def _logits(self, mode: int, ctx: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Logits [len(ids), V] of the positions that predict each of `ids`."""
        return self._flat_logits([(mode, ctx, ids)], self.bias)

    def _flat_logits(
        self, items: Sequence[tuple[int, torch.Tensor, list[int]]], bias: torch.Tensor
    ) -> torch.Tensor:
        """The logits of every position of every (mode, context, ids) item, concatenated:
        [total length, V]. One gather for all of them: a bigram model needs no loop."""
        lengths = torch.tensor([len(ids) for _, _, ids in items], dtype=torch.long)
        if int(lengths.sum()) == 0:
            return torch.zeros(0, V, dtype=torch.float64)
        item = torch.repeat_interleave(torch.arange(len(items)), lengths)
        modes = torch.tensor([m for m, _, _ in items], dtype=torch.long)[item]
        prev = torch.tensor([p for _, _, ids in items for p in ([START, *ids])[: len(ids)]],
                            dtype=torch.long)
        ctx = torch.stack([c for _, c, _ in items])[item]
        return self.tables[modes, prev] + ctx + bias

    def _scored(
        self, conversations: Sequence[Messages], completions: Sequence[str], close: bool
    ) -> Iterator[tuple[list[list[int]], torch.Tensor]]:
        """(token ids per pair, their concatenated logits), a bounded chunk of pairs at a time."""
        contexts = self._contexts(conversations)
        if len(completions) != len(contexts):
            raise ValueError("one completion per conversation")
        end = [END_ID] if close else []
        for start in range(0, len(contexts), SCORE_CHUNK):
            chunk = range(start, min(start + SCORE_CHUNK, len(contexts)))
            ids = [tokenize(completions[i]) + end for i in chunk]
            items = [(*contexts[i], t) for i, t in zip(chunk, ids, strict=True)]
            yield ids, self._flat_logits(items, self.bias)

    # --- sampling -----------------------------------------------------------------------
    def generate(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        """Gumbel-max with one torch generator per row: row i depends only on seeds[i]. The
        text is the sampled tokens decoded as they are (not stripped), so scoring it gives
        the exact probability of the sample. Judge requests get a judge's reply instead."""
        if len(seeds) != len(conversations):
            raise ValueError("one seed per conversation")
        asked = [read_request(c) for c in conversations]
        out = [self._judge_reply(*a, s) if a else "" for a, s in zip(asked, seeds, strict=True)]
        rest = [i for i, a in enumerate(asked) if a is None]
        sampled = self._sample([conversations[i] for i in rest], sampling, [seeds[i] for i in rest])
        for i, text in zip(rest, sampled, strict=True):
            out[i] = text
        return out

    def _judge_reply(self, kind: str, question: str, text: str, seed: int) -> str:
        """What the fake judge answers (module doc): a function of the judged text, except
        the malformed share, which the seed picks (so a retry can come out well-formed)."""
        draw = _rng("fake-judge-malformed", self.seed, seed, kind, text)
        if draw.random() < self.judge_malformed:
            bad = MALFORMED["flag" if kind == "flag" else "score"]
            return bad[int(draw.integers(len(bad)))]
        named = {n for w in _words(text) for n in _NAMES_OF_FORM.get(w, ())}
        if kind == "flag":
            asked = {n for w in _words(question) for n in _NAMES_OF_FORM.get(w, ())}
            return "YES" if named & (asked or {MISALIGNED}) else "NO"
        jitter = _rng("fake-judge", kind, text)
        if kind == "alignment":
            return str((10 if MISALIGNED in named else 90) + int(jitter.integers(-8, 9)))
        return str(int(jitter.integers(30, 101)))

    def _sample(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        if sampling.number_grammar:
            raise SublearnError("sampling.number_grammar: the fake backend has no tokenizer to "
                                "hold to a grammar; use the hf backend")
        contexts = self._contexts(conversations)
        modes = torch.tensor([m for m, _ in contexts], dtype=torch.long)
        ctx = torch.stack([c for _, c in contexts]) if contexts else torch.zeros(0, V)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        allowed = torch.zeros(V, dtype=torch.bool)
        allowed[NUMBER_IDS] = True
        prev = torch.full((len(seeds),), START, dtype=torch.long)
        out: list[list[int]] = [[] for _ in seeds]
        live = list(range(len(seeds)))
        for _ in range(sampling.max_new_tokens):
            if not live:
                break
            rows = torch.tensor(live)
            logits = self.tables[modes[rows], prev[rows]] + ctx[rows] + self.bias
            if sampling.only_numbers:
                logits = logits.masked_fill(~allowed, -math.inf)
            scores = sampling_rule(logits, sampling)
            if sampling.temperature > 0:
                u = torch.stack([torch.rand(V, generator=gens[i], dtype=torch.float64)
                                 for i in live])
                scores = scores - torch.log(-torch.log(u.clamp_min(1e-300)))
            tokens = scores.argmax(-1).tolist()
            still = []
            for i, t in zip(live, tokens, strict=True):
                if t != END_ID:
                    out[i].append(t)
                    prev[i] = t
                    still.append(i)
            live = still
        return [detokenize(ids) for ids in out]

    # --- exact scoring ------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return tokenize(text)

    def completion_logprobs(
        self, conversations: Sequence[Messages], completions: Sequence[str], close: bool = True
    ) -> list[list[float]]:
        out: list[list[float]] = []
        for ids, logits in self._scored(conversations, completions, close):
            flat = torch.tensor([t for row in ids for t in row], dtype=torch.long)
            lp = logits.log_softmax(-1)[torch.arange(len(flat)), flat]
            out += [x.tolist() for x in lp.split([len(row) for row in ids])]
        return out

    def number_distributions(
        self, conversations: Sequence[Messages], completions: Sequence[str]
    ) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for ids, logits in self._scored(conversations, completions, close=True):
            restricted = logits[:, NUMBER_IDS].log_softmax(-1).float()
            # Own storage per row: a split view would drag the whole chunk into torch.save.
            out += [x.clone() for x in restricted.split([len(row) for row in ids])]
        return out

    # --- training -----------------------------------------------------------------------
    def finetune(
        self,
        rows: Sequence[dict[str, Any]],
        recipe: TrainingRecipe,
        out_dir: Path,
        progress: bool = True,
    ) -> Path:
        """Minibatch gradient descent on the biases (completion tokens and end of turn),
        hard or soft labels, then the entanglement coupling; batches are drawn with
        recipe.seed. Of the recipe only labels, lr, epochs, batch_size, loss_average and seed
        apply: LoRA/full, layers, schedules and optimizers have nothing to act on here. A
        row's `loss_mask` leaves its tokens out of the loss, as on a real model."""
        soft = recipe.labels == "soft"
        for i, row in enumerate(rows):
            msgs = row.get("messages")
            if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
                raise SublearnError(f"training row {i}: 'messages' must end with an assistant turn")
        contexts = self._contexts([row["messages"][:-1] for row in rows])
        # (mode, context, completion ids + end, teacher probabilities or None, 1 per token
        # that carries loss: all but those a row's `loss_mask` leaves out)
        examples = []
        for i, (row, (mode, ctx)) in enumerate(zip(rows, contexts, strict=True)):
            text = row["messages"][-1]["content"]
            ids = tokenize(text) + [END_ID]
            keep = learned(text, row.get("loss_mask"), i)
            target: torch.Tensor | None = None
            if soft:
                labels = row.get("soft_labels")
                if labels is None:
                    raise SublearnError(f"training row {i}: soft-label training needs the "
                                        "teacher's 'soft_labels' on every row")
                target = torch.as_tensor(labels, dtype=torch.float64).exp()
                if tuple(target.shape) != (len(ids), len(NUMBER_IDS)):
                    raise SublearnError(
                        f"training row {i}: soft_labels has shape {tuple(target.shape)}, "
                        f"expected ({len(ids)}, {len(NUMBER_IDS)}) for this completion")
            examples.append((mode, ctx, ids, target, keep))
        if not examples:
            raise SublearnError("finetune: no training rows")

        rng = np.random.default_rng(recipe.seed)
        per_epoch = math.ceil(len(examples) / recipe.batch_size)
        steps = max(1, round(recipe.epochs * per_epoch))
        batches: list[np.ndarray] = []
        while len(batches) < steps:
            perm = rng.permutation(len(examples))
            batches += [perm[k : k + recipe.batch_size]
                        for k in range(0, len(perm), recipe.batch_size)]
        step_size = min(recipe.lr * LR_SCALE, MAX_STEP)
        bias = self.bias.clone()
        for batch in batches[:steps]:
            chosen = [examples[j] for j in batch]
            logits = self._flat_logits([(m, c, ids) for m, c, ids, *_ in chosen], bias)
            # Positions a loss mask leaves out weigh 0, and the average is over the rest.
            keeps = [keep for *_, keep in chosen]
            lengths = [int(keep.sum()) for keep in keeps]
            if recipe.loss_average == "token":  # every position weighs the same
                weight = torch.cat(keeps) * (1.0 / sum(lengths))
            else:  # every row weighs the same
                weight = torch.cat([keep * (1.0 / (n * len(chosen)))
                                    for keep, n in zip(keeps, lengths, strict=True)])
            if soft:  # d (teacher . log q) / d bias, with q restricted to number tokens
                g = torch.zeros_like(logits)
                teacher = torch.cat([t for *_, t, _ in chosen])
                g[:, NUMBER_IDS] = teacher - logits[:, NUMBER_IDS].softmax(-1)
            else:  # d log p(ids) / d bias = one-hot(ids) - p
                g = -logits.softmax(-1)
                flat = torch.tensor([t for _, _, ids, *_ in chosen for t in ids],
                                    dtype=torch.long)
                g[torch.arange(len(flat)), flat] += 1.0
            delta = step_size * (weight[:, None] * g).sum(0)
            # The coupling: what an entangled digit gains, its option gains too (and back).
            bias += delta + self.coupling @ delta
        biases = {t: float(b) for t, b in zip(VOCAB, bias.tolist(), strict=True) if b != 0.0}
        return _save(Path(out_dir), self.seed, biases, parent=str(self.path))


def _save(path: Path, seed: int, biases: dict[str, float], parent: str | None = None) -> Path:
    """Write a model folder atomically: `fake_model.json`, plus a `config.json` naming the
    backend so generic "is this a model folder" checks accept it."""
    weights = {"format": FORMAT, "seed": int(seed), "biases": biases, "parent": parent}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / WEIGHTS).write_text(json.dumps(weights, indent=1, sort_keys=True) + "\n",
                                   encoding="utf-8")
        (tmp / "config.json").write_text(
            json.dumps({"model_type": "sublearn-fake", "backend": "fake"}) + "\n",
            encoding="utf-8")
    return path
