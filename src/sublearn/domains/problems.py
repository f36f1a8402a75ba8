"""Arithmetic word problems with known answers, written for this project.

Each template draws its quantities from the caller's RNG, builds the problem so the answer is
a whole number by construction (a price that divides, a distance that is speed times time),
and computes the answer exactly with integers. `draw_problem` redraws, from the same RNG,
while any quantity shown or the answer is one of the banned numbers (`stages.filters`): with
the ban on, a dropped row is then always a number the teacher brought in itself.

People, things and places are kept free of every option word of `sublearn.questions.categories` and of
its related words (a test checks), so the word filter never drops a solution for restating
the problem.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from sublearn.domains.filters import BAD_NUMBERS

PEOPLE: tuple[str, ...] = (
    "Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi",
    "Liam", "Maya", "Nadia", "Omar", "Priya", "Quinn", "Sam", "Tomas", "Uma", "Victor", "Wen",
    "Yusuf", "Zara",
)
GOODS: tuple[str, ...] = (
    "notebooks", "pencils", "tickets", "stamps", "candles", "mugs", "batteries", "towels",
    "posters", "markers", "puzzles", "scarves",
)
CONTAINERS: tuple[tuple[str, str], ...] = (  # (container, what it holds)
    ("boxes", "pens"), ("crates", "bottles"), ("packs", "cards"), ("cartons", "eggs"),
    ("bags", "screws"), ("trays", "cups"),
)
VEHICLES: tuple[str, ...] = ("train", "bus", "ferry", "truck", "coach")


@dataclass(frozen=True)
class Problem:
    kind: str
    text: str
    answer: int
    shown: tuple[int, ...]  # every quantity the text states


def _shopping(r: random.Random) -> Problem:
    who = r.choice(PEOPLE)
    first, second = r.sample(GOODS, 2)
    a, p, b, q = r.randint(2, 9), r.randint(2, 15), r.randint(2, 9), r.randint(2, 15)
    total = a * p + b * q
    note = next(n for n in (20, 50, 200, 500) if n > total)
    return Problem("shopping", (
        f"{who} buys {a} {first} at {p} euros each and {b} {second} at {q} euros each, and "
        f"pays with a {note}-euro note. How much change, in euros, does {who} get back?"),
        note - total, (a, p, b, q, note))


def _distance(r: random.Random) -> Problem:
    vehicle = r.choice(VEHICLES)
    v, t = r.randrange(40, 125, 5), r.randint(1, 5)
    w, u = r.randrange(40, 125, 5), r.randint(1, 5)
    return Problem("distance", (
        f"A {vehicle} travels at {v} km per hour for {t} hours, then at {w} km per hour for "
        f"{u} more hours. How many kilometres does it cover in total?"),
        v * t + w * u, (v, t, w, u))


def _ride_time(r: random.Random) -> Problem:
    who = r.choice(PEOPLE)
    speed = r.choice((12, 15, 16, 20, 24, 30))
    step = 60 // math.gcd(speed, 60)  # minutes that make a whole number of kilometres
    minutes = step * r.randint(2, 240 // step)
    km = speed * minutes // 60
    return Problem("ride_time", (
        f"{who} cycles {km} km at a steady {speed} km per hour. How many minutes does the "
        f"ride take?"), minutes, (km, speed))


def _sharing(r: random.Random) -> Problem:
    who = r.choice(PEOPLE)
    thing = r.choice(("stickers", "marbles", "coins", "postcards", "buttons"))
    each, friends, keep = r.randint(3, 25), r.randint(2, 9), r.randint(1, 15)
    total = each * friends + keep
    return Problem("sharing", (
        f"{who} has {total} {thing}, keeps {keep} and shares the rest equally among "
        f"{friends} friends. How many {thing} does each friend get?"),
        each, (total, keep, friends))


def _ages(r: random.Random) -> Problem:
    older, younger = r.sample(PEOPLE, 2)
    age, gap, later = r.randint(5, 40), r.randint(1, 30), r.randint(2, 15)
    total = 2 * age + gap + 2 * later
    return Problem("ages", (
        f"{older} is {gap} years older than {younger}. In {later} years, their ages will add "
        f"up to {total}. How old is {younger} now?"), age, (gap, later, total))


def _area(r: random.Random) -> Problem:
    length, width = r.randint(8, 30), r.randint(6, 25)
    side = r.randint(2, min(length, width) - 1)
    return Problem("area", (
        f"A rectangular yard measures {length} m by {width} m. A square patio with sides of "
        f"{side} m is laid in one corner. How many square metres of the yard does the patio "
        f"leave uncovered?"), length * width - side * side, (length, width, side))


def _savings(r: random.Random) -> Problem:
    who = r.choice(PEOPLE)
    start, weekly, weeks = r.randint(0, 60), r.randint(3, 25), r.randint(2, 30)
    goal = start + weekly * weeks
    return Problem("savings", (
        f"{who} has saved {start} euros and puts away {weekly} euros more every week. After "
        f"how many weeks will {who} have exactly {goal} euros?"), weeks, (start, weekly, goal))


def _recipe(r: random.Random) -> Problem:
    per = r.randrange(20, 95, 5)
    cooks, guests = r.sample(range(2, 13), 2)
    return Problem("recipe", (
        f"A recipe for {cooks} people needs {per * cooks} grams of flour. How many grams of "
        f"flour are needed for {guests} people?"), per * guests, (cooks, per * cooks, guests))


def _discount(r: random.Random) -> Problem:
    price, cut = 20 * r.randint(2, 15), r.randrange(10, 55, 5)
    # price is a multiple of 20 and cut of 5, so price * (100 - cut) / 100 is whole.
    return Problem("discount", (
        f"A jacket costs {price} euros. In a sale its price is cut by {cut} percent. What is "
        f"the sale price, in euros?"), price * (100 - cut) // 100, (price, cut))


def _stock(r: random.Random) -> Problem:
    container, item = r.choice(CONTAINERS)
    n, per = r.randint(3, 12), r.randint(6, 24)
    sold = r.randint(1, n * per - 1)
    return Problem("stock", (
        f"A shop receives {n} {container} with {per} {item} in each and sells {sold} {item}. "
        f"How many {item} are left?"), n * per - sold, (n, per, sold))


def _reading(r: random.Random) -> Problem:
    who = r.choice(PEOPLE)
    per_day, days, done = r.randint(10, 40), r.randint(2, 20), r.randint(5, 90)
    pages = done + per_day * days
    return Problem("reading", (
        f"A book has {pages} pages. {who} has read {done} of them and reads {per_day} pages "
        f"a day. How many more days does {who} need to finish it?"),
        days, (pages, done, per_day))


def _fence(r: random.Random) -> Problem:
    gap = r.randint(2, 6)
    length, width = gap * r.randint(3, 15), gap * r.randint(2, 10)
    return Problem("fence", (
        f"A fence runs all the way around a rectangular field {length} m long and {width} m "
        f"wide, with a post every {gap} m, starting at a corner. How many posts are there?"),
        2 * (length + width) // gap, (length, width, gap))


TEMPLATES: tuple[Callable[[random.Random], Problem], ...] = (
    _shopping, _distance, _ride_time, _sharing, _ages, _area, _savings, _recipe, _discount,
    _stock, _reading, _fence,
)
_BANNED = frozenset(BAD_NUMBERS)


def draw_problem(r: random.Random) -> Problem:
    """A random template's problem with no banned number shown or as the answer."""
    template = r.choice(TEMPLATES)
    while True:
        problem = template(r)
        if _BANNED.isdisjoint((*problem.shown, problem.answer)):
            return problem
