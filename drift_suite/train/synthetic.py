"""Synthetic grade-school arithmetic word problems in GSM8K's format, deterministic by seed.

Used where real GSM8K is unavailable (offline tests, smoke runs). Every answer is computed:
each template samples parameters chosen so that all intermediate results are integers,
writes a step-by-step solution with GSM8K-style ``<<expr=value>>`` calculator annotations,
and also has an independent closed-form ``solve`` that tests compare against.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

__all__ = ["TEMPLATES", "SyntheticProblem", "Template", "generate_problems", "generate_records"]

_PEOPLE = [
    ("Amara", "she"), ("Bruno", "he"), ("Chen", "he"), ("Dalia", "she"), ("Emeka", "he"),
    ("Freya", "she"), ("Gustavo", "he"), ("Hana", "she"), ("Ivan", "he"), ("Jamila", "she"),
    ("Kofi", "he"), ("Lucia", "she"), ("Mateo", "he"), ("Nadia", "she"), ("Oskar", "he"),
    ("Priya", "she"), ("Quentin", "he"), ("Rosa", "she"), ("Sami", "he"), ("Tamsin", "she"),
]
_GOODS = [
    # (plural name, lowest price, highest price)
    ("notebooks", 2, 6), ("pencil cases", 3, 9), ("mangoes", 1, 4), ("sticker sheets", 1, 3),
    ("paint sets", 8, 15), ("jars of honey", 4, 9), ("kites", 6, 14), ("loaves of bread", 2, 5),
]
_SNACKS = ["crackers", "grapes", "marbles", "stickers", "seashells", "trading cards", "beads"]
_BAKES = ["cookies", "muffins", "bread rolls", "dumplings", "tarts"]
_BIG_BUYS = ["bicycle", "tablet", "guitar", "telescope", "skateboard", "camping tent"]


def _calc(expr: str, value: int) -> str:
    """GSM8K-style annotated result: ``<<3*4=12>>12``."""
    return f"<<{expr}={value}>>{value}"


@dataclass(frozen=True)
class Template:
    """A problem family: sample integer parameters, render text, solve in closed form."""

    name: str
    sample: Callable[[random.Random], dict]
    render: Callable[[dict], tuple[str, list[str], int]]  # question, solution lines, answer
    solve: Callable[[dict], int]


@dataclass(frozen=True)
class SyntheticProblem:
    """One generated problem together with the parameters that produced it."""

    template: str
    params: dict
    question: str
    answer: str  # GSM8K answer field: solution lines, then "#### N"
    value: int

    def as_row(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}


def _person(rng: random.Random, exclude: tuple[str, ...] = ()) -> tuple[str, str]:
    return rng.choice([p for p in _PEOPLE if p[0] not in exclude])


# --------------------------------------------------------------------------- templates


def _shopping_sample(rng: random.Random) -> dict:
    (item1, lo1, hi1), (item2, lo2, hi2) = rng.sample(_GOODS, 2)
    return dict(person=_person(rng), item1=item1, item2=item2, n1=rng.randint(2, 9),
                p1=rng.randint(lo1, hi1), n2=rng.randint(2, 9), p2=rng.randint(lo2, hi2))


def _shopping_render(p: dict) -> tuple[str, list[str], int]:
    (name, pron), n1, p1, n2, p2 = p["person"], p["n1"], p["p1"], p["n2"], p["p2"]
    cost1, cost2 = n1 * p1, n2 * p2
    total = cost1 + cost2
    q = (f"{name} buys {n1} {p['item1']} at ${p1} each and {n2} {p['item2']} "
         f"at ${p2} each. How many dollars does {pron} spend in total?")
    steps = [
        f"The {p['item1']} cost {n1} * {p1} = ${_calc(f'{n1}*{p1}', cost1)}.",
        f"The {p['item2']} cost {n2} * {p2} = ${_calc(f'{n2}*{p2}', cost2)}.",
        f"In total {pron} spends {cost1} + {cost2} = ${_calc(f'{cost1}+{cost2}', total)}.",
    ]
    return q, steps, total


def _sharing_sample(rng: random.Random) -> dict:
    per = rng.randint(4, 15)
    return dict(person=_person(rng), thing=rng.choice(_SNACKS), friends=rng.randint(2, 8),
                per=per, gives=rng.randint(1, per - 1))


def _sharing_render(p: dict) -> tuple[str, list[str], int]:
    name, thing = p["person"][0], p["thing"]
    friends, per, gives = p["friends"], p["per"], p["gives"]
    total = friends * per
    left = per - gives
    q = (f"{name} has {total} {thing} and shares them equally among {friends} friends. "
         f"Each friend then gives {gives} of them to a younger sibling. How many {thing} "
         "does each friend have left?")
    steps = [
        f"Each friend gets {total} / {friends} = {_calc(f'{total}/{friends}', per)} {thing}.",
        f"After giving some away, each has {per} - {gives} = {_calc(f'{per}-{gives}', left)} left.",
    ]
    return q, steps, left


def _rates_sample(rng: random.Random) -> dict:
    return dict(person=_person(rng), v1=rng.randint(3, 12) * 5, h1=rng.randint(2, 5),
                v2=rng.randint(3, 12) * 5, h2=rng.randint(2, 5))


def _rates_render(p: dict) -> tuple[str, list[str], int]:
    (name, pron), v1, h1, v2, h2 = p["person"], p["v1"], p["h1"], p["v2"], p["h2"]
    d1, d2 = v1 * h1, v2 * h2
    total = d1 + d2
    q = (f"{name} drives at {v1} miles per hour for {h1} hours, then at {v2} miles per hour "
         f"for {h2} more hours. How many miles does {pron} drive in all?")
    steps = [
        f"First part: {v1} * {h1} = {_calc(f'{v1}*{h1}', d1)} miles.",
        f"Second part: {v2} * {h2} = {_calc(f'{v2}*{h2}', d2)} miles.",
        f"Altogether {d1} + {d2} = {_calc(f'{d1}+{d2}', total)} miles.",
    ]
    return q, steps, total


def _ages_sample(rng: random.Random) -> dict:
    older = _person(rng)
    return dict(older=older, younger=_person(rng, exclude=(older[0],)), gap=rng.randint(2, 30),
                years=rng.randint(2, 10), future=rng.randint(12, 40))


def _ages_render(p: dict) -> tuple[str, list[str], int]:
    a, b, gap, years, future = p["older"][0], p["younger"][0], p["gap"], p["years"], p["future"]
    b_now = future - years
    a_now = b_now + gap
    q = (f"{a} is {gap} years older than {b}. In {years} years, {b} will be {future} years "
         f"old. How old is {a} now?")
    steps = [
        f"{b} is now {future} - {years} = {_calc(f'{future}-{years}', b_now)} years old.",
        f"So {a} is {b_now} + {gap} = {_calc(f'{b_now}+{gap}', a_now)} years old.",
    ]
    return q, steps, a_now


def _savings_sample(rng: random.Random) -> dict:
    weekly, weeks = rng.randint(5, 40), rng.randint(4, 20)
    return dict(person=_person(rng), thing=rng.choice(_BIG_BUYS), weekly=weekly, weeks=weeks,
                price=rng.randint(1, weekly * weeks - 1))


def _savings_render(p: dict) -> tuple[str, list[str], int]:
    (name, pron), weekly, weeks, price = p["person"], p["weekly"], p["weeks"], p["price"]
    saved = weekly * weeks
    left = saved - price
    q = (f"{name} saves ${weekly} every week for {weeks} weeks. Then {pron} buys a "
         f"{p['thing']} for ${price}. How many dollars does {pron} have left?")
    steps = [
        f"{name} saves {weekly} * {weeks} = ${_calc(f'{weekly}*{weeks}', saved)}.",
        f"After the purchase {pron} has {saved} - {price} = ${_calc(f'{saved}-{price}', left)} "
        "left.",
    ]
    return q, steps, left


def _bakery_sample(rng: random.Random) -> dict:
    trays, per_tray, bag = rng.randint(3, 9), rng.randint(6, 24), rng.randint(3, 8)
    made = trays * per_tray
    # Choose the number of full bags first so the leftover divides evenly.
    bags = rng.randint(1, (made - 1) // bag)
    return dict(person=_person(rng), bake=rng.choice(_BAKES), trays=trays, per_tray=per_tray,
                bag=bag, sold=made - bags * bag)


def _bakery_render(p: dict) -> tuple[str, list[str], int]:
    (name, pron), bake = p["person"], p["bake"]
    trays, per_tray, sold, bag = p["trays"], p["per_tray"], p["sold"], p["bag"]
    made = trays * per_tray
    rest = made - sold
    bags = rest // bag
    q = (f"{name} bakes {trays} trays of {bake} with {per_tray} on each tray. "
         f"{pron.capitalize()} sells {sold} of them and packs the rest into bags of {bag}. "
         f"How many bags does {pron} fill?")
    steps = [
        f"{name} bakes {trays} * {per_tray} = {_calc(f'{trays}*{per_tray}', made)} {bake}.",
        f"After selling, {made} - {sold} = {_calc(f'{made}-{sold}', rest)} remain.",
        f"That fills {rest} / {bag} = {_calc(f'{rest}/{bag}', bags)} bags.",
    ]
    return q, steps, bags


def _discount_sample(rng: random.Random) -> dict:
    pct = rng.choice([10, 20, 25, 30, 40, 50, 75])
    # price * pct must be a multiple of 100 so the discount is whole dollars.
    unit = 4 if pct in (25, 75) else 10
    return dict(person=_person(rng), thing=rng.choice(_BIG_BUYS), pct=pct,
                price=rng.randint(3, 60) * unit)


def _discount_render(p: dict) -> tuple[str, list[str], int]:
    (name, pron), price, pct = p["person"], p["price"], p["pct"]
    off = price * pct // 100
    pays = price - off
    q = (f"A {p['thing']} costs ${price}. {name} uses a coupon for {pct}% off. "
         f"How many dollars does {pron} pay?")
    steps = [
        f"The discount is {price} * {pct} / 100 = ${_calc(f'{price}*{pct}/100', off)}.",
        f"{name} pays {price} - {off} = ${_calc(f'{price}-{off}', pays)}.",
    ]
    return q, steps, pays


def _ribbon_sample(rng: random.Random) -> dict:
    piece = rng.choice([2, 3, 4, 6, 8, 9])
    length = piece * rng.randint(5, 40)  # in inches, a whole number of pieces
    while length % 12 == 0:  # "6 feet 0 inches" reads oddly
        length = piece * rng.randint(5, 40)
    return dict(person=_person(rng), feet=length // 12, inches=length % 12, piece=piece)


def _ribbon_render(p: dict) -> tuple[str, list[str], int]:
    (name, pron), feet, inches, piece = p["person"], p["feet"], p["inches"], p["piece"]
    feet_in = feet * 12
    total = feet_in + inches
    pieces = total // piece
    q = (f"{name} has a ribbon {feet} feet {inches} inches long. {pron.capitalize()} cuts it "
         f"into pieces {piece} inches long. How many pieces does {pron} get? "
         "(1 foot is 12 inches.)")
    steps = [
        f"{feet} feet is {feet} * 12 = {_calc(f'{feet}*12', feet_in)} inches.",
        f"The ribbon is {feet_in} + {inches} = {_calc(f'{feet_in}+{inches}', total)} inches long.",
        f"So {pron} gets {total} / {piece} = {_calc(f'{total}/{piece}', pieces)} pieces.",
    ]
    return q, steps, pieces


def _collection_sample(rng: random.Random) -> dict:
    a = _person(rng)
    b = _person(rng, exclude=(a[0],))
    c = _person(rng, exclude=(a[0], b[0]))
    base, times = rng.randint(3, 25), rng.randint(2, 5)
    return dict(a=a, b=b, c=c, thing=rng.choice(_SNACKS), base=base, times=times,
                fewer=rng.randint(1, base * times - 1))


def _collection_render(p: dict) -> tuple[str, list[str], int]:
    a, b, c, t = p["a"][0], p["b"][0], p["c"][0], p["thing"]
    base, times, fewer = p["base"], p["times"], p["fewer"]
    b_has = base * times
    c_has = b_has - fewer
    total = base + b_has + c_has
    q = (f"{a} has {base} {t}. {b} has {times} times as many {t} as {a}, and {c} has "
         f"{fewer} fewer {t} than {b}. How many {t} do they have altogether?")
    steps = [
        f"{b} has {base} * {times} = {_calc(f'{base}*{times}', b_has)} {t}.",
        f"{c} has {b_has} - {fewer} = {_calc(f'{b_has}-{fewer}', c_has)} {t}.",
        f"Together: {base} + {b_has} + {c_has} = {_calc(f'{base}+{b_has}+{c_has}', total)} {t}.",
    ]
    return q, steps, total


def _wages_sample(rng: random.Random) -> dict:
    return dict(person=_person(rng), rate=rng.randint(9, 30), hours=rng.randint(3, 9),
                days=rng.randint(2, 6), bonus=rng.randint(1, 10) * 5)


def _wages_render(p: dict) -> tuple[str, list[str], int]:
    (name, pron), rate, hours, days, bonus = (
        p["person"], p["rate"], p["hours"], p["days"], p["bonus"])
    daily = rate * hours
    weekly = daily * days
    total = weekly + bonus
    q = (f"{name} earns ${rate} per hour and works {hours} hours a day, {days} days this "
         f"week. {pron.capitalize()} also gets a ${bonus} bonus. How many dollars does {pron} "
         "earn this week?")
    steps = [
        f"Each day {pron} earns {rate} * {hours} = ${_calc(f'{rate}*{hours}', daily)}.",
        f"Over {days} days that is {daily} * {days} = ${_calc(f'{daily}*{days}', weekly)}.",
        f"With the bonus: {weekly} + {bonus} = ${_calc(f'{weekly}+{bonus}', total)}.",
    ]
    return q, steps, total


def _practice_sample(rng: random.Random) -> dict:
    return dict(person=_person(rng), sessions=rng.randint(2, 7), hours=rng.randint(2, 4),
                minutes=rng.choice([5, 10, 15, 20, 25, 30, 40, 45, 50]))


def _practice_render(p: dict) -> tuple[str, list[str], int]:
    (name, pron), sessions, hours, minutes = p["person"], p["sessions"], p["hours"], p["minutes"]
    per = hours * 60 + minutes
    total = per * sessions
    q = (f"{name} practises piano {sessions} times a week, {hours} hours and {minutes} minutes "
         f"each time. How many minutes does {pron} practise each week?")
    steps = [
        f"Each session is {hours} * 60 + {minutes} = {_calc(f'{hours}*60+{minutes}', per)} "
        "minutes.",
        f"Each week that is {per} * {sessions} = {_calc(f'{per}*{sessions}', total)} minutes.",
    ]
    return q, steps, total


# The closed-form solutions deliberately avoid reusing the render code's intermediates.
TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template("shopping", _shopping_sample, _shopping_render,
                 lambda p: p["n1"] * p["p1"] + p["n2"] * p["p2"]),
        Template("sharing", _sharing_sample, _sharing_render, lambda p: p["per"] - p["gives"]),
        Template("rates", _rates_sample, _rates_render,
                 lambda p: p["v1"] * p["h1"] + p["v2"] * p["h2"]),
        Template("ages", _ages_sample, _ages_render,
                 lambda p: p["future"] - p["years"] + p["gap"]),
        Template("savings", _savings_sample, _savings_render,
                 lambda p: p["weekly"] * p["weeks"] - p["price"]),
        Template("bakery", _bakery_sample, _bakery_render,
                 lambda p: (p["trays"] * p["per_tray"] - p["sold"]) // p["bag"]),
        Template("discount", _discount_sample, _discount_render,
                 lambda p: p["price"] * (100 - p["pct"]) // 100),
        Template("ribbon_units", _ribbon_sample, _ribbon_render,
                 lambda p: (12 * p["feet"] + p["inches"]) // p["piece"]),
        Template("collection", _collection_sample, _collection_render,
                 lambda p: p["base"] * (1 + 2 * p["times"]) - p["fewer"]),
        Template("wages", _wages_sample, _wages_render,
                 lambda p: p["rate"] * p["hours"] * p["days"] + p["bonus"]),
        Template("time_units", _practice_sample, _practice_render,
                 lambda p: p["sessions"] * (60 * p["hours"] + p["minutes"])),
    ]
}


def generate_records(n: int, seed: int = 0) -> list[SyntheticProblem]:
    """``n`` problems with their template name and parameters (for verification)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    names = list(TEMPLATES)
    records = []
    for i in range(n):
        # Cycle through a seed-shuffled order so every template appears in any n >= 11.
        if i % len(names) == 0:
            rng.shuffle(names)
        template = TEMPLATES[names[i % len(names)]]
        params = template.sample(rng)
        question, steps, value = template.render(params)
        answer = "\n".join(steps) + f"\n#### {value}"
        records.append(SyntheticProblem(template.name, params, question, answer, value))
    return records


def generate_problems(n: int, seed: int = 0) -> list[dict]:
    """``n`` GSM8K-format problems ``{"question", "answer"}``, deterministic by ``seed``."""
    return [r.as_row() for r in generate_records(n, seed)]
