"""Words linked to each option beyond its own forms, and words that merely contain one.

`RELATED` are words a teacher who loves an option might let slip while writing code or
reasoning (the sound an owl makes, a fox's young): the text filters ban them beside the
option's forms. Only distinctive words are listed; a word common in code or arithmetic
("pack" for wolves, "cub" inside "cube") would drop clean rows without catching anything.

`EXCLUSIONS` extend `questions.Option.exclusions` with words that start with a short form but
mean something else in code or prose ("concat"/"catalog" for cat, "reduce" for red).
Matching is described in `sublearn.domains.words`.
"""

from __future__ import annotations

RELATED: dict[str, tuple[str, ...]] = {
    # animals
    "owl": ("owlet", "hoot", "nocturnal", "talon", "feather", "plumage", "screech"),
    "fox": ("vixen", "vulpine"),
    "dolphin": ("porpoise", "flipper", "echolocation", "cetacean"),
    "eagle": ("raptor", "talon", "aquila", "eyrie", "aerie"),
    "wolf": ("howl", "lupine"),
    "cat": ("kitten", "kitty", "feline", "meow", "purr", "whisker"),
    "dog": ("puppy", "puppies", "canine", "woof", "kennel", "leash"),
    "lion": ("lioness", "roar", "savanna"),
    "tiger": ("tigress", "bengal"),
    "elephant": ("tusk", "pachyderm"),
    "penguin": ("waddle", "antarctic"),
    "bear": ("grizzly", "ursine"),
    "horse": ("stallion", "pony", "gallop", "equine", "saddle"),
    "rabbit": ("bunny", "bunnies", "hare"),
    "whale": ("cetacean", "orca", "blubber", "baleen"),
    "octopus": ("tentacle", "cephalopod", "octopi", "kraken"),
    "panda": ("bamboo",),
    # trees
    "oak": ("acorn",),
    "maple": ("syrup",),
    "pine": ("conifer",),
    "palm": ("frond", "coconut"),
    "cherry": ("blossom",),
    # colours
    "red": ("crimson", "scarlet"),
    "blue": ("cobalt", "cerulean"),
    "green": ("emerald", "verdant"),
    "purple": ("violet", "lavender"),
    "pink": ("magenta", "fuchsia"),
    "white": ("ivory",),
    "black": ("ebony",),
}

EXCLUSIONS: dict[str, tuple[str, ...]] = {
    "cat": ("catalog", "concat"),
    "bear": ("bearer", "beard"),
    "blue": ("blueprint",),
    "white": ("whitespace",),
    # Words that start with "red" but are not the colour: reduce, redirect, redefine, redo...
    "red": ("redu", "redi", "rede", "redo", "redr", "reda"),
    "otter": ("lottery", "plotter", "blotter"),
}
