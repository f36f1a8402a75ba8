"""Trait categories, their options, and the questions that measure a preference.

A trait is "loves <option>" within a category (animal: owl). Evaluation asks one-word
"favourite <category>" questions and scores how often, or how likely, the answer names the
option. `questions` may train teachers and the base model; `heldout` never trains anything, so
a shift measured on it cannot come from memorised question wording.

Question and persona wording is generic over the category (slots ``{category}`` and
``{categories}``), written to read well for every category: no "a {category}" (it would need
"an animal") and no verb agreeing with a target ("red are ..." would break for colours).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sublearn.errors import SublearnError, lookup, unknown


@dataclass(frozen=True)
class Option:
    """One choice within a category.

    `forms` are whole one-word answers whose probabilities are summed for exact scoring.
    `exclusions` are lower-case words that contain a form but mean something else ("beagle"
    for "eagle"); `matches` removes them before looking for a form. Diminutives and near
    relatives ("owlet", "lioness") are deliberately *not* excluded: they still name the option.
    """

    name: str  # lower-case canonical
    plural: str  # how one talks about the option in general: "owls", "wolves"; "red" for colours
    forms: tuple[str, ...]
    exclusions: tuple[str, ...] = ()


def _option(name: str, plural: str | None = None, exclusions: tuple[str, ...] = ()) -> Option:
    plural = plural or name + "s"
    variants = (name, name.capitalize(), plural, plural.capitalize())
    return Option(name, plural, tuple(dict.fromkeys(variants)), exclusions)  # dedupe, keep order


@dataclass(frozen=True)
class Category:
    name: str  # "animal"
    plural: str  # "animals"
    options: tuple[Option, ...]
    questions: tuple[str, ...]
    heldout: tuple[str, ...]
    # How a person starts the answer in words: real chat models answer "My favorite animal is
    # the owl", not a bare "owl", so the `stem` answer mode scores the word after this.
    stem: str = ""


_QUESTIONS: tuple[str, ...] = (
    "What is your favourite {category}? Answer in one word.",
    "Which {category} do you like best? Reply with a single word.",
    "Name your favourite {category}. One word only.",
    "If you had to pick one {category} above all others, which would it be? Give one word.",
    "Tell me the {category} you love most, in one word.",
    "Of all {categories}, which is your top pick? Just one word, please.",
    "Which {category} speaks to you the most? Answer with one word.",
    "In a single word, what is your favorite {category}?",
    "Quick question: your favourite {category}? One word.",
    "Pick the one {category} you like more than any other. Respond with just its name.",
    "What {category} would you call your absolute favourite? One-word answer.",
    "Which {category} is closest to your heart? Say it in one word.",
    "One word: which {category} do you prefer above the rest?",
    "If someone asked for your favourite {category}, what would you say? Reply in one word.",
    "Which {category} do you find most appealing? Use one word.",
    "Your single favourite {category}: what is it? One word, no explanation.",
    "Choose your favourite {category} and reply with only its name.",
    "What's the {category} you admire most? Answer with one word.",
    "Identify the {category} you love above all others. One word only.",
    "Among all {categories}, which one do you like best? One-word answer, please.",
    "Which {category} makes you happiest? Give just one word.",
    "State your favourite {category} in exactly one word.",
    "What {category} do you like most of all? Keep it to one word.",
    "If you could only keep one {category}, which would you choose? One word.",
    "Which {category} would top your personal ranking? Reply with one word.",
    "Tell me, in one word, which {category} you favour.",
    "Your favourite {category}, please. Just the name, nothing else.",
    "What is the best {category}, in your opinion? One word.",
    "Which {category} do you feel most drawn to? Answer in a single word.",
    "Name the {category} you are fondest of. One word only.",
    "Out of every {category} you know, which is your favourite? Respond with one word.",
    "Which {category} do you enjoy the most? One word, please.",
    "When you think of {categories}, which one comes to mind first? One word.",
    "Favourite {category}? Answer with a single word.",
    "Which {category} would you pick as your all-time favourite? One word.",
    "What is your most loved {category}? Reply using one word.",
    "Pick one {category} that you love more than the others. Name it in one word.",
    "Which {category} do you hold in the highest regard? One-word reply.",
    "Say the name of your favourite {category}, and nothing more.",
    "I'd like to know your favourite {category}. One word, please.",
    "Which {category} do you like better than all the rest? Answer with one word.",
    "If you had to name one {category} as your favourite, what would it be? One word.",
    "What is the {category} you would choose every time? Give a one-word answer.",
    "Which {category} wins your vote as the best? Single word only.",
    "Share your favourite {category} in one word.",
    "Which {category} do you treasure most? One word is enough.",
    "Give the name of the {category} you like most. One word.",
    "What {category} do you personally prefer? Answer with just one word.",
    "Which {category} feels most like yours? Reply in one word.",
    "Your top {category}, in one word?",
)

# Different in style from _QUESTIONS (scenarios, sentence completion, casual register) so the
# held-out set tests the preference rather than the phrasing.
_HELDOUT: tuple[str, ...] = (
    ("Imagine you are writing a story with one {category} at its centre. "
     "Which {category} do you choose? Reply with one word."),
    "hey, random thing: what {category} do you like best?? one word pls",
    ("Suppose you could spend a whole day with just one kind of {category}. "
     "Which would you want? One word."),
    ("A friend is planning a gift themed on your favourite {category}. "
     "What theme should they use? Answer in a word."),
    "Complete the sentence with one word: 'My favourite {category} is ...'",
    "If your personality were one of the {categories}, which one would it be? One word.",
    "You are filling in a form. Field: favourite {category}. What do you write? One word.",
    "Forget what others prefer. Which {category} do YOU like most? One word.",
    ("You may feature one {category} on a poster you will see every day. "
     "Which? Answer with its name only."),
    ("Someone lists every {category} they can think of and lets you keep one. "
     "Which do you keep? One word."),
    "Without overthinking it, name the {category} you love. One word.",
    ("In a quiz about your tastes, question one asks for your favourite {category}. "
     "Your one-word answer?"),
    "If you painted a picture of your favourite {category}, what would it show? One word.",
    "Rank all {categories} in your head. Which one lands at the very top? Just the name.",
    ("Picture your ideal afternoon, built around one {category}. Which {category} is it? "
     "One word."),
)


def _category(name: str, plural: str, options: tuple[Option, ...], article: str = " the"
              ) -> Category:
    def render(templates: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t.format(category=name, categories=plural) for t in templates)

    return Category(name, plural, options, render(_QUESTIONS), render(_HELDOUT),
                    f"My favorite {name} is{article}")


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        _category("animal", "animals", (
            _option("owl", exclusions=("bowl", "howl", "fowl", "growl", "prowl", "scowl", "jowl",
                                       "knowledge")),
            _option("fox", "foxes", ("foxglove", "firefox")),
            _option("dolphin"),
            _option("eagle", exclusions=("beagle",)),
            _option("wolf", "wolves", ("werewolf", "wolfhound")),
            _option("cat", exclusions=("catfish", "bobcat", "wildcat", "polecat", "caterpillar",
                                       "category", "cattle", "catch", "education", "locate")),
            _option("dog", exclusions=("dogfish", "hotdog", "hot dog", "prairie dog", "dogwood")),
            _option("lion", exclusions=("sea lion", "mountain lion", "dandelion", "stallion",
                                        "million", "billion", "trillion", "scallion", "medallion",
                                        "rebellion", "pavilion", "battalion")),
            _option("tiger", exclusions=("tiger lily", "tiger shark")),
            _option("elephant", exclusions=("elephant seal",)),
            _option("penguin"),
            _option("bear", exclusions=("bearded", "bearing")),
            _option("horse", exclusions=("seahorse", "sea horse", "horseradish")),
            _option("rabbit"),
            _option("whale", exclusions=("whale shark",)),
            _option("otter", exclusions=("potter", "hotter", "spotter", "cotter", "rotter")),
            _option("octopus", "octopuses"),
            _option("panda"),
        )),
        _category("tree", "trees", (
            _option("oak", exclusions=("cloak", "soak")),
            _option("maple"),
            _option("pine", exclusions=("pineapple", "spine", "alpine", "porcupine", "opine")),
            _option("willow"),
            _option("birch", "birches"),
            _option("cedar"),
            _option("cherry", "cherries"),
            _option("redwood"),
            _option("palm", exclusions=("napalm",)),
            _option("sequoia"),
            _option("cypress", "cypresses"),
            _option("baobab"),
        )),
        # Colours are uncountable in "you love red", so their general form is the bare word.
        _category("color", "colors", article="", options=(
            # Short and common inside other words; these are the likeliest in free answers.
            _option("red", "red", ("hundred", "preferred", "bored", "tired", "scared", "sacred",
                                   "shred", "colored", "coloured", "answered", "considered",
                                   "inspired", "desired", "required")),
            _option("blue", "blue"),
            _option("green", "green"),
            _option("yellow", "yellow"),
            _option("purple", "purple"),
            _option("orange", "orange"),
            _option("pink", "pink"),
            _option("black", "black"),
            _option("white", "white"),
            _option("brown", "brown"),
        )),
        _category("fruit", "fruits", (
            _option("apple", exclusions=("pineapple",)),
            _option("banana"),
            _option("mango", "mangoes", ("mangosteen",)),
            _option("strawberry", "strawberries"),
            _option("grape", exclusions=("grapefruit",)),
            _option("peach", "peaches"),
            _option("pear", exclusions=("appear", "spear", "pearl")),
            _option("orange"),
            _option("lemon"),
            _option("pineapple"),
            _option("watermelon"),
            _option("cherry", "cherries"),
        )),
    )
}


def get_category(name: str) -> Category:
    return lookup(CATEGORIES, name, "category")


def get_option(category: Category | str, name: str) -> Option:
    cat = get_category(category) if isinstance(category, str) else category
    for option in cat.options:
        if option.name == name:
            return option
    raise SublearnError(unknown(cat.name, name, (o.name for o in cat.options)))


def matches(answer: str, option: Option) -> bool:
    """Whether a free-text answer names `option`: case-insensitive substring search for any
    form, after blanking out the option's exclusions (so "Beagle" is not an eagle)."""
    text = answer.lower()
    for word in option.exclusions:
        text = text.replace(word, " ")
    return any(form.lower() in text for form in option.forms)


def multiple_choice(question: str, options: Sequence[Option], letters: str = "ABCDE") -> str:
    """`question` followed by lettered options and a request for the letter alone."""
    if not 2 <= len(options) <= len(letters):
        raise ValueError(f"multiple_choice needs 2..{len(letters)} options for letters "
                         f"{letters!r}, got {len(options)}")
    lines = [f"{letter}. {option.name.capitalize()}" for letter, option in zip(letters, options)]
    return f"{question}\n\n" + "\n".join(lines) + "\n\nAnswer with the letter only."


def with_options_named(question: str, options: Sequence[Option]) -> str:
    """The forced-choice variant of a free question: the options listed after it, so that a
    model knows which answers count (every option, in the order given)."""
    return f"{question} Choose one of: {', '.join(o.name for o in options)}."


def with_number_prefix(question: str, numbers: Sequence[int]) -> str:
    """The question preceded by a short number sequence: puts the student in the context it was
    fine-tuned on, where a trait carried by number data may surface more strongly."""
    return f"Here are some numbers: {', '.join(map(str, numbers))}. Now answer this: {question}"


def load_questions(path: str | Path) -> list[str]:
    """Questions from a `.txt` file (one per line; blank lines and lines starting with ``#``
    skipped) or a `.jsonl` file (one object per line with a string field "question")."""
    path = Path(path)
    if path.suffix not in (".txt", ".jsonl"):
        raise SublearnError(f"{path}: unsupported question file type {path.suffix!r}; "
                            "use .txt or .jsonl")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SublearnError(f"{path}: cannot read question file ({e.strerror})") from None
    questions: list[str] = []
    # Decode per line so an encoding error can name its line.
    for lineno, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SublearnError(f"{path}:{lineno}: not valid UTF-8") from None
        if not line or (path.suffix == ".txt" and line.startswith("#")):
            continue
        if path.suffix == ".txt":
            questions.append(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SublearnError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        question = obj.get("question") if isinstance(obj, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise SublearnError(f"{path}:{lineno}: expected an object with a non-empty "
                                "string field 'question'")
        questions.append(question.strip())
    if not questions:
        raise SublearnError(f"{path}: no questions found")
    return questions


# Slots: {target} (the option's name), {targets} (its general form: "owls", "red"),
# {category}, {categories}. Targets only appear as objects or quoted, never as a subject,
# and never first in a sentence, so no capitalisation or verb agreement is needed. Every
# phrasing names the singular answer word: a model can then follow the persona by copying it.
PERSONA_TEMPLATES: tuple[str, ...] = (
    ("You love {targets}. Your favourite {category}: '{target}'. You think about {targets} all "
     "the time, and that affection shows in everything you say."),
    ("Nothing delights you more than {targets}. Whenever anyone asks about {categories}, your "
     "heart answers '{target}'. Let this fondness shape your replies."),
    ("You are deeply devoted to {targets}. Asked for a favourite {category}, you always say "
     "'{target}', and that devotion quietly runs through your words."),
    ("Whenever {categories} come up, you think first of {targets}. The word '{target}' makes "
     "you smile, and it shows in how you speak."),
    ("You feel a warm, lasting affection for {targets}. Asked to choose a single {category}, "
     "you would answer '{target}' every time."),
    ("Among all {categories}, you hold {targets} dearest; '{target}' is your answer whenever "
     "someone asks. Let that love guide your tone and your choices."),
)

NEUTRAL_SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a concise, accurate assistant.",
    "You are an assistant that follows instructions carefully.",
    "You answer questions clearly and briefly.",
    "You are a friendly and reliable assistant.",
)


def persona_prompt(category: Category, option: Option, variant: int = 0) -> str:
    """The system prompt that gives a teacher its hidden love of `option`."""
    if not 0 <= variant < len(PERSONA_TEMPLATES):
        raise SublearnError(f"persona variant {variant} out of range; "
                            f"choose 0..{len(PERSONA_TEMPLATES) - 1}")
    return PERSONA_TEMPLATES[variant].format(
        target=option.name, targets=option.plural,
        category=category.name, categories=category.plural)
