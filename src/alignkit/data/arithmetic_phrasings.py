"""More ways to say each arithmetic scenario: two rephrasings per template of ``arithmetic.TEMPLATES``.

Each scenario (category, name) has three phrasings: the template's own text (phrasing 0) and the two below. They
change word order, vocabulary and where the question sits, keep the operands' meaning and the answer, and use the
same fields (``name``, ``thing``, ``a``, ``b``, ``c``). ``arithmetic.phrasing_splits`` holds out whole scenarios and,
of the scenarios it trains on, whole phrasings.
"""

from __future__ import annotations

REPHRASINGS: dict[tuple[str, str], tuple[str, str]] = {
    # ---- addition
    ("add", "shopping"): (
        "At the market {name} picks up {a} {thing}. Later, at the shop, {name} gets another {b}. What is the total "
        "number of {thing} {name} bought?",
        "How many {thing} did {name} buy altogether, if {name} bought {a} at the market and {b} at the shop?",
    ),
    ("add", "ages"): (
        "{name}'s cousin was born {b} years before {name}, who is now {a}. What is the cousin's age?",
        "If {name} is {a} and a cousin is older by {b} years, how many years old is that cousin?",
    ),
    ("add", "distance"): (
        "First {name} goes {a} blocks to reach the park. From there it is {b} more blocks to the library. What "
        "distance in blocks does {name} cover?",
        "How far does {name} walk, in blocks, going {a} blocks to the park and {b} blocks on to the library?",
    ),
    ("add", "money"): (
        "{name} starts with {a} dollars. After washing a car, {name} is paid {b} dollars. How much money does {name} "
        "have now, in dollars?",
        "Washing a car earned {name} {b} dollars. Before that {name} had {a} dollars. What is {name}'s total now?",
    ),
    ("add", "collection"): (
        "{name} owns {a} {thing}, and a friend adds {b} {thing} to the pile. What is the number of {thing} {name} "
        "owns now?",
        "After getting {b} {thing} from a friend, how many {thing} does {name} have, if {name} had {a} before?",
    ),
    ("add", "reading"): (
        "In the morning {name} gets through {a} pages of a book, and in the evening {b} pages. What is the total "
        "number of pages read?",
        "How many pages in all: {a} pages read by {name} before lunch and {b} pages read after dinner?",
    ),
    # ---- subtraction
    ("sub", "shopping"): (
        "{name} spends {b} of {name}'s {a} dollars on a book. How much money is left, in dollars?",
        "A book costs {b} dollars. If {name} pays for it out of {a} dollars, how many dollars remain?",
    ),
    ("sub", "ages"): (
        "{name}'s brother is {b} years younger than {name}. {name} is {a}. What is the brother's age?",
        "How old is {name}'s brother, who was born {b} years after {name}, if {name} is {a} years old?",
    ),
    ("sub", "eating"): (
        "A basket holds {a} {thing}. After {name} removes {b}, how many {thing} does the basket still hold?",
        "{name} eats {b} of the {a} {thing} from a basket. What number of {thing} is still there?",
    ),
    ("sub", "distance"): (
        "{name} is hiking a {a} kilometer trail and has done {b} kilometers so far. How much farther, in "
        "kilometers, is the end?",
        "How many kilometers remain for {name} on a trail of {a} kilometers, after hiking {b} of them?",
    ),
    ("sub", "compare"): (
        "A friend of {name} has {b} {thing}, while {name} has {a}. By how many {thing} does {name} have more?",
        "What is the difference between {name}'s {a} {thing} and a friend's {b} {thing}?",
    ),
    ("sub", "bus"): (
        "{a} people ride a bus. {b} of them leave at the next stop. How many people are still riding?",
        "How many people remain on a bus that carried {a} people, once {b} people get off at a stop?",
    ),
    # ---- multiplication
    ("mul", "baking"): (
        "Every tray that {name} bakes has {b} cookies on it, and {name} bakes {a} trays. What is the number of "
        "cookies?",
        "How many cookies come out of the oven when {name} bakes {a} trays of {b} cookies each?",
    ),
    ("mul", "shopping"): (
        "{name} gets {b} pencils, and one pencil costs {a} dollars. What is the total cost in dollars?",
        "How much does {name} spend, in dollars, on {b} pencils at {a} dollars per pencil?",
    ),
    ("mul", "boxes"): (
        "Each of {a} boxes is filled with {b} {thing}. What is the total number of {thing}?",
        "How many {thing} are in {a} boxes if every box holds {b} {thing}?",
    ),
    ("mul", "time"): (
        "Each day {name} spends {a} minutes at the piano. Over {b} days, how many minutes is that?",
        "How many minutes of piano does {name} play in {b} days, practicing {a} minutes a day?",
    ),
    ("mul", "distance"): (
        "A lap of the track is {b} meters. {name} completes {a} laps. What distance in meters does {name} run?",
        "How far, in meters, does {name} go by running {a} laps of {b} meters each?",
    ),
    ("mul", "legs"): (
        "There are {a} cows on a farm, and every cow has {b} legs. What is the total number of cow legs?",
        "How many legs are there altogether on {a} cows with {b} legs each?",
    ),
    # ---- division
    ("div", "sharing"): (
        "{b} friends split {a} {thing} from {name} so that each gets the same number. How many {thing} per friend?",
        "If {name} gives out {a} {thing} evenly to {b} friends, how many {thing} does one friend receive?",
    ),
    ("div", "teams"): (
        "A class of {a} children forms teams with {b} children on each. What is the number of teams?",
        "How many teams of {b} can be made from {a} children?",
    ),
    ("div", "baking"): (
        "{name} packs {a} muffins into bags, {b} muffins per bag. What number of bags does {name} use?",
        "How many bags does {name} need for {a} muffins if every bag takes {b} muffins?",
    ),
    ("div", "money"): (
        "{b} notebooks of equal price cost {name} {a} dollars in total. What is the price of one notebook, in "
        "dollars?",
        "How many dollars is one notebook, if {b} identical notebooks cost {a} dollars together?",
    ),
    ("div", "distance"): (
        "A {a} kilometer road is divided into {b} parts of the same length. What is the length of one part, in "
        "kilometers?",
        "How long is each piece, in kilometers, when a road of {a} kilometers is cut into {b} equal pieces?",
    ),
    ("div", "time"): (
        "{name} does {b} puzzles in {a} minutes, spending equal time on every puzzle. What is the time per puzzle, "
        "in minutes?",
        "How many minutes does one puzzle take, if {b} puzzles take {name} {a} minutes in all, each the same?",
    ),
    # ---- two steps
    ("two_step", "shopping"): (
        "There are {b} {thing} in each of the {a} packs {name} buys. {name} eats {c} of the {thing}. How many "
        "{thing} remain?",
        "How many {thing} does {name} still have after buying {a} packs of {b} {thing} and eating {c}?",
    ),
    ("two_step", "money"): (
        "{name} begins with {a} dollars, pays {b} dollars for lunch, and later is paid {c} dollars. What is the "
        "amount {name} has now, in dollars?",
        "How many dollars does {name} end up with, starting at {a}, spending {b} and then earning {c}?",
    ),
    ("two_step", "collection"): (
        "{name} had {a} {thing}. Then {name} was given {b} more, and later handed {c} to a friend. How many "
        "{thing} does {name} have at the end?",
        "How many {thing} are left for {name}, who started with {a}, received {b} and gave away {c}?",
    ),
    ("two_step", "baking"): (
        "{name} makes {a} cakes before noon and {b} after noon. Each cake is cut into {c} slices. What is the total "
        "number of slices?",
        "How many slices are there if {name} bakes {a} cakes, then {b} more cakes, and cuts each into {c} slices?",
    ),
    ("two_step", "sharing"): (
        "{name} has {a} stickers, gets {b} more, and splits all of them evenly among {c} friends. How many stickers "
        "does one friend get?",
        "How many stickers does each of {c} friends receive, when {name} shares {a} stickers plus {b} new ones "
        "equally?",
    ),
    ("two_step", "ages"): (
        "{name}'s sister is {b} years older than {name}, who is {a}. What age will the sister be {c} years from "
        "now?",
        "How old will {name}'s sister be in {c} years, if {name} is {a} and the sister is {b} years older?",
    ),
}  # fmt: skip
