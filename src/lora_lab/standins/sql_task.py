"""The cpu profile's task: text-to-SQL rows in b-mc2/sql-create-context's format, and execution match.

Each row has an English `question`, the `context` it is about (one `CREATE TABLE` statement) and
the SQL `answer`, like the Hub dataset the t4 profile learns. The rows are generated here, so the
cpu profile needs no Hub:

- 40 tables from different domains (players, films, ships, schools, ...), each with text columns
  whose values come from a small pool (so that rows repeat them, for grouping) and numeric
  columns (INTEGER or REAL) with a range;
- 12 query shapes (`SHAPES`): a value by a condition, COUNT with a comparison, AND and OR of two
  conditions, BETWEEN, ORDER BY ... LIMIT, GROUP BY with COUNT or an aggregate, HAVING, COUNT
  DISTINCT, an aggregate with a condition; each with several English phrasings;
- string values in double quotes, as the Hub dataset writes them (`WHERE name = "O'Brien"`).

`make_sql_splits` keeps the tables apart: the eval rows ask about tables that no training row
uses, so a model must read the schema rather than remember it.

**Why execution match.** Exact match compares spelling: `SELECT a FROM t WHERE b > 3` and
`SELECT a FROM t WHERE 3 < b` differ as text and mean the same. `execution_match` runs both queries
in sqlite3 on the example's table filled with seeded rows, whose values include the literals the
reference query mentions and their neighbours (so `>` and `>=`, or another value, give different
results), on four different fillings, and compares the results: as multisets, or in order when
the reference sorts with ORDER BY.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections import Counter

#: (table, text columns with their value pools, numeric columns with type and range).
TABLES = [
    ("player", {"name": ["Ana Silva", "Ben Carter", "Kim Lee", "Sam O'Brien", "Ravi Das"],
                "position": ["guard", "forward", "center"], "team": ["Hawks", "Bears", "Comets", "Lions"]},
     {"points": ("INTEGER", 0, 40), "age": ("INTEGER", 18, 38)}),
    ("film", {"title": ["Blue River", "The Long Night", "Paper Moon", "Iron Gate"],
              "genre": ["drama", "comedy", "horror"], "director": ["Ada Moss", "Luis Vega", "Mia Chen"]},
     {"year": ("INTEGER", 1970, 2024), "rating": ("REAL", 1, 10)}),
    ("ship", {"name": ["Aurora", "Sea Star", "Northwind", "Queen's Pride"], "type": ["cargo", "tanker", "ferry"],
              "flag": ["Panama", "Norway", "Greece"]},
     {"tonnage": ("INTEGER", 500, 90000), "built": ("INTEGER", 1950, 2020)}),
    ("school", {"school_name": ["Oak Hill", "Riverside", "St. Mary's", "Lakeview"],
                "city": ["Leeds", "Austin", "Perth", "Lyon"], "kind": ["public", "private"]},
     {"enrollment": ("INTEGER", 100, 3000), "founded": ("INTEGER", 1850, 2010)}),
    ("employee", {"name": ["Joe Park", "Lena Roy", "Omar Haddad", "Eve Stone"],
                  "department": ["sales", "finance", "legal", "support"], "office": ["Berlin", "Dublin", "Quito"]},
     {"salary": ("INTEGER", 30000, 120000), "years_employed": ("INTEGER", 0, 30)}),
    ("product", {"product_name": ["desk lamp", "kettle", "backpack", "monitor"],
                 "category": ["home", "office", "travel"], "brand": ["Acme", "Zenith", "Nordic"]},
     {"price": ("REAL", 5, 500), "stock": ("INTEGER", 0, 900)}),
    ("election", {"candidate": ["M. Ortiz", "J. Novak", "P. Okafor", "L. D'Souza"],
                  "party": ["Green", "Labour", "Liberal"], "district": ["North", "East", "Harbor"]},
     {"votes": ("INTEGER", 100, 50000), "share": ("REAL", 0, 100)}),
    ("city", {"official_name": ["Lima", "Oslo", "Cairo", "Seoul", "Dakar"],
              "status": ["capital", "town", "village"], "country": ["Peru", "Norway", "Egypt"]},
     {"population": ("INTEGER", 1000, 900000), "area_km2": ("REAL", 5, 900)}),
    ("airport", {"airport_name": ["Kingsford", "Ravenna", "Marlow Field"], "country": ["Chile", "Japan", "Kenya"],
                 "icao": ["SCEL", "RJTT", "HKJK", "EGLL"]},
     {"passengers": ("INTEGER", 10000, 900000), "runways": ("INTEGER", 1, 6)}),
    ("book", {"title": ["Quiet Roads", "Salt and Ash", "The Clockmaker", "Winter's Tale"],
              "author": ["R. Okoye", "T. Berg", "H. Sato"], "language": ["English", "French", "Spanish"]},
     {"pages": ("INTEGER", 90, 900), "published": ("INTEGER", 1900, 2023)}),
    ("race", {"race_name": ["Spring Cup", "Coastal 10K", "Hill Sprint"], "winner": ["A. Kipruto", "S. Ito", "F. Mora"],
              "venue": ["Nairobi", "Osaka", "Madrid"]},
     {"distance_km": ("REAL", 1, 42), "runners": ("INTEGER", 20, 3000)}),
    ("album", {"album_title": ["Neon Days", "Low Tide", "Paper Hearts"], "artist": ["The Foxes", "Mira", "Dub Nine"],
               "label": ["Polar", "Redline", "Indigo"]},
     {"tracks": ("INTEGER", 6, 22), "sales": ("INTEGER", 1000, 800000)}),
    ("hospital", {"hospital_name": ["General", "St. Luke's", "Mercy", "Hillcrest"],
                  "region": ["north", "south", "west"], "ownership": ["public", "private"]},
     {"beds": ("INTEGER", 20, 1200), "doctors": ("INTEGER", 5, 400)}),
    ("restaurant", {"restaurant_name": ["Olive Tree", "Blue Door", "Casa Nova", "Bao House"],
                    "cuisine": ["Italian", "Mexican", "Chinese", "Greek"], "neighborhood": ["Old Town", "Docks"]},
     {"seats": ("INTEGER", 10, 200), "avg_price": ("REAL", 8, 90)}),
    ("mountain", {"mountain_name": ["Mount Ada", "Red Peak", "Grey Horn"], "range_name": ["Andes", "Alps", "Atlas"],
                  "country": ["Chile", "Italy", "Morocco"]},
     {"height_m": ("INTEGER", 1000, 8000), "prominence_m": ("INTEGER", 100, 4000)}),
    ("course", {"course_title": ["Algebra I", "Biology", "World History", "Painting"],
                "department": ["math", "science", "arts"], "instructor": ["Dr. Wu", "Ms. Hale", "Mr. Obi"]},
     {"credits": ("INTEGER", 1, 6), "enrolled": ("INTEGER", 5, 300)}),
    ("station", {"station_name": ["Central", "Harbor Rd", "King's Cross", "Elm Park"],
                 "line": ["red", "blue", "green"], "zone_name": ["inner", "outer"]},
     {"platforms": ("INTEGER", 1, 12), "daily_riders": ("INTEGER", 100, 90000)}),
    ("game", {"home_team": ["Rovers", "United", "Athletic"], "away_team": ["City", "Wanderers", "Rangers"],
              "stadium": ["North Park", "Bay Arena"]},
     {"attendance": ("INTEGER", 500, 80000), "home_score": ("INTEGER", 0, 7)}),
    ("museum", {"museum_name": ["Art House", "Maritime", "Science Hall"], "city": ["Bergen", "Porto", "Tunis"],
                "theme": ["art", "history", "science"]},
     {"visitors": ("INTEGER", 1000, 900000), "opened": ("INTEGER", 1800, 2020)}),
    ("phone", {"model": ["X10", "Nova 5", "Pixelate", "Galaxy Q"], "maker": ["Orbit", "Kite", "Nova"],
               "os": ["Android", "iOS"]},
     {"price": ("REAL", 99, 1500), "battery_mah": ("INTEGER", 2000, 6000)}),
    ("farm", {"farm_name": ["Green Acres", "Red Barn", "Hilltop"], "county": ["Kent", "Cork", "Essex"],
              "crop": ["wheat", "barley", "corn"]},
     {"total_horses": ("INTEGER", 0, 60), "cows": ("INTEGER", 0, 400)}),
    ("singer", {"name": ["Lucia Ferro", "Tom Wade", "Ines Rey", "D'Angelo Cruz"],
                "country": ["Italy", "Canada", "Spain"], "genre": ["pop", "jazz", "folk"]},
     {"age": ("INTEGER", 18, 80), "net_worth_millions": ("REAL", 0, 300)}),
    ("bridge", {"bridge_name": ["Old Stone", "Harbor Span", "Twin Arch"], "river": ["Thames", "Douro", "Nile"],
                "material": ["steel", "stone", "concrete"]},
     {"length_m": ("INTEGER", 20, 3000), "opened": ("INTEGER", 1700, 2020)}),
    ("hotel", {"hotel_name": ["Grand Plaza", "Sea View", "Pine Lodge", "Hotel Noor"],
               "city": ["Nice", "Dubai", "Quebec"], "chain": ["Stay", "Luxe", "independent"]},
     {"rooms": ("INTEGER", 10, 800), "stars": ("INTEGER", 1, 5)}),
    ("volcano", {"volcano_name": ["Fuego", "Hekla", "Etna", "Taal"], "country": ["Guatemala", "Iceland", "Italy"],
                 "status": ["active", "dormant"]},
     {"elevation_m": ("INTEGER", 300, 6000), "last_eruption": ("INTEGER", 1500, 2023)}),
    ("flight", {"flight_number": ["LL101", "QF22", "AZ310", "KE77"], "origin": ["Rome", "Sydney", "Seoul"],
                "destination": ["Lima", "Tokyo", "Paris"]},
     {"distance_km": ("INTEGER", 200, 16000), "delay_minutes": ("INTEGER", 0, 300)}),
    ("team", {"team_name": ["Falcons", "Sharks", "Wolves", "Owls"], "league": ["East", "West"],
              "coach": ["R. Diaz", "K. Moon", "B. Hart"]},
     {"wins": ("INTEGER", 0, 30), "losses": ("INTEGER", 0, 30)}),
    ("company", {"company_name": ["Brightline", "Kestrel", "Orca Labs", "Mendel & Co"],
                 "industry": ["energy", "retail", "biotech"], "headquarters": ["Oslo", "Austin", "Pune"]},
     {"revenue_billions": ("REAL", 0, 200), "employees": ("INTEGER", 10, 90000)}),
    ("painting", {"painting_title": ["Dawn", "The Harbor", "Still Life", "Two Sisters"],
                  "painter": ["E. Varga", "M. Lund", "C. Abara"], "medium": ["oil", "watercolor", "ink"]},
     {"year": ("INTEGER", 1500, 2020), "value_millions": ("REAL", 0, 150)}),
    ("store", {"store_name": ["Corner Shop", "MegaMart", "Fresh Stop"], "district": ["Centre", "Harbor", "Hills"],
               "manager": ["P. Lam", "S. Novak", "A. Idowu"]},
     {"staff": ("INTEGER", 2, 120), "weekly_sales": ("INTEGER", 1000, 90000)}),
    ("movie_theater", {"theater_name": ["Rialto", "Odeon", "Starlight"], "city": ["Cork", "Graz", "Tulsa"],
                       "owner": ["Cine Co", "Vista", "Reel Ltd"]},
     {"screens": ("INTEGER", 1, 20), "seats": ("INTEGER", 50, 3000)}),
    ("river", {"river_name": ["Amber", "Silverrun", "Kalu"], "continent": ["Europe", "Africa", "Asia"],
               "mouth": ["North Sea", "Red Sea", "Bay of Bengal"]},
     {"length_km": ("INTEGER", 50, 6700), "basin_km2": ("INTEGER", 1000, 900000)}),
    ("library", {"library_name": ["Central", "Westgate", "Maple"], "borough": ["Queens", "Camden", "Fitzroy"],
                 "system": ["city", "county", "university"]},
     {"books": ("INTEGER", 1000, 900000), "members": ("INTEGER", 100, 90000)}),
    ("car", {"car_model": ["Roadster", "Voyager", "Ember", "Cityline"], "maker": ["Altis", "Volta", "Kagi"],
             "fuel": ["petrol", "diesel", "electric"]},
     {"horsepower": ("INTEGER", 60, 700), "price": ("REAL", 9, 200)}),
    ("festival", {"festival_name": ["Sunburst", "Jazz Nights", "Folk Fair"], "city": ["Austin", "Ghent", "Accra"],
                  "month_name": ["June", "July", "August"]},
     {"attendance": ("INTEGER", 500, 90000), "days": ("INTEGER", 1, 10)}),
    ("satellite", {"satellite_name": ["Orion-2", "Kappa", "Lumen"], "operator": ["ESA", "ISRO", "JAXA"],
                   "orbit": ["LEO", "GEO", "MEO"]},
     {"launch_year": ("INTEGER", 1970, 2024), "mass_kg": ("INTEGER", 50, 9000)}),
    ("cafe", {"cafe_name": ["Bean There", "Café Noir", "The Daily Grind"], "street": ["Main St", "Quay Rd"],
              "roaster": ["Hill", "Coast", "Ridge"]},
     {"tables": ("INTEGER", 2, 40), "rating": ("REAL", 1, 5)}),
    ("park", {"park_name": ["Riverside", "Elm Green", "Kings Park"], "city": ["Perth", "Leeds", "Boise"],
              "kind": ["national", "city", "state"]},
     {"area_hectares": ("REAL", 1, 900), "trails": ("INTEGER", 0, 40)}),
    ("tournament", {"tournament_name": ["Open", "Masters", "Classic"], "sport": ["tennis", "golf", "chess"],
                    "host_city": ["Doha", "Rome", "Lagos"]},
     {"prize_money": ("INTEGER", 1000, 900000), "entrants": ("INTEGER", 8, 256)}),
    ("bank", {"bank_name": ["First Union", "Harbor Trust", "Peak Savings"], "state": ["Ohio", "Texas", "Maine"],
              "charter": ["national", "state"]},
     {"branches": ("INTEGER", 1, 400), "assets_billions": ("REAL", 0, 900)}),
]
#: Tables whose rows are held out for evaluation (every 4th in this list): no training row uses them.
EVAL_TABLES = tuple(name for i, (name, _, _) in enumerate(TABLES) if i % 4 == 3)

_OPERATORS = [(">", ["greater than", "more than", "above"]), ("<", ["less than", "below", "under"]),
              (">=", ["at least", "no less than"]), ("<=", ["at most", "no more than"]),
              ("!=", ["other than", "different from"])]
_AGGREGATES = [("AVG", ["average", "mean"]), ("MAX", ["highest", "largest", "maximum"]),
               ("MIN", ["lowest", "smallest", "minimum"]), ("SUM", ["total", "sum of the"])]


def _words(column: str) -> str:
    return column.replace("_", " ")


def _literal(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _number(rng: random.Random, spec) -> int | float:
    kind, low, high = spec
    return round(rng.uniform(low, high), 1) if kind == "REAL" else rng.randint(low, high)


def _shape_value_where(rng, table, texts, numbers):
    col, target = rng.choice(list(numbers)), rng.choice(list(texts))
    value = rng.choice(texts[target])
    question = rng.choice([f"What is the {_words(col)} of the {table} whose {_words(target)} is {value}?",
                           f"Give the {_words(col)} for {_words(target)} {value}.",
                           f"Which {_words(col)} does the {table} with {_words(target)} {value} have?"])
    return question, f"SELECT {col} FROM {table} WHERE {target} = {_literal(value)}"


def _shape_count_compare(rng, table, texts, numbers):
    col = rng.choice(list(numbers))
    op, phrases = rng.choice(_OPERATORS)
    value = _number(rng, numbers[col])
    question = rng.choice([f"How many {table} rows have a {_words(col)} {rng.choice(phrases)} {value}?",
                           f"Count the {table} entries whose {_words(col)} is {rng.choice(phrases)} {value}."])
    return question, f"SELECT COUNT(*) FROM {table} WHERE {col} {op} {value}"


def _shape_and(rng, table, texts, numbers):
    show, target = rng.sample(list(texts), 2)
    col = rng.choice(list(numbers))
    op, phrases = rng.choice(_OPERATORS[:2])
    value, name = _number(rng, numbers[col]), rng.choice(texts[target])
    question = rng.choice([f"List the {_words(show)} of {table} with {_words(target)} {name} and a {_words(col)} "
                           f"{rng.choice(phrases)} {value}.",
                           f"Which {_words(show)} has {_words(target)} {name} and {_words(col)} {rng.choice(phrases)} "
                           f"{value}?"])
    return question, f"SELECT {show} FROM {table} WHERE {target} = {_literal(name)} AND {col} {op} {value}"


def _shape_or(rng, table, texts, numbers):
    show, target = rng.sample(list(texts), 2)
    first, second = rng.sample(texts[target], 2)
    question = rng.choice([f"Show the {_words(show)} of every {table} whose {_words(target)} is {first} or {second}.",
                           f"What {_words(show)} do the {table} rows with {_words(target)} {first} or {second} have?"])
    return question, (f"SELECT {show} FROM {table} WHERE {target} = {_literal(first)} OR {target} = "
                      f"{_literal(second)}")


def _shape_between(rng, table, texts, numbers):
    show, col = rng.choice(list(texts)), rng.choice(list(numbers))
    low, high = sorted((_number(rng, numbers[col]), _number(rng, numbers[col])))
    question = rng.choice([f"Which {_words(show)} have a {_words(col)} between {low} and {high}?",
                           f"List the {_words(show)} of {table} with {_words(col)} from {low} to {high}."])
    return question, f"SELECT {show} FROM {table} WHERE {col} BETWEEN {low} AND {high}"


def _shape_top(rng, table, texts, numbers):
    show, col = rng.choice(list(texts)), rng.choice(list(numbers))
    k = rng.randint(1, 3)
    most = rng.random() < 0.5
    word = rng.choice(["highest", "largest"] if most else ["lowest", "smallest"])
    question = rng.choice([f"What are the {_words(show)} of the {k} {table} rows with the {word} {_words(col)}?",
                           f"Give the {_words(show)} of the top {k} {table} by {word} {_words(col)}."])
    return question, f"SELECT {show} FROM {table} ORDER BY {col} {'DESC' if most else 'ASC'} LIMIT {k}"


def _shape_group_count(rng, table, texts, numbers):
    col = rng.choice(list(texts))
    question = rng.choice([f"How many {table} rows are there for each {_words(col)}?",
                           f"Count the {table} entries per {_words(col)}."])
    return question, f"SELECT {col}, COUNT(*) FROM {table} GROUP BY {col}"


def _shape_group_aggregate(rng, table, texts, numbers):
    group, col = rng.choice(list(texts)), rng.choice(list(numbers))
    function, words = rng.choice(_AGGREGATES)
    question = rng.choice([f"What is the {rng.choice(words)} {_words(col)} for each {_words(group)}?",
                           f"For every {_words(group)}, give the {rng.choice(words)} {_words(col)} of its {table} rows."])
    return question, f"SELECT {group}, {function}({col}) FROM {table} GROUP BY {group}"


def _shape_having(rng, table, texts, numbers):
    group = rng.choice(list(texts))
    k = rng.randint(1, 3)
    question = rng.choice([f"Which {_words(group)} values appear in more than {k} {table} rows?",
                           f"List each {_words(group)} that has more than {k} {table} entries."])
    return question, f"SELECT {group} FROM {table} GROUP BY {group} HAVING COUNT(*) > {k}"


def _shape_count_distinct(rng, table, texts, numbers):
    col = rng.choice(list(texts))
    question = rng.choice([f"How many different {_words(col)} values are there among the {table} rows?",
                           f"Count the distinct {_words(col)} of {table}."])
    return question, f"SELECT COUNT(DISTINCT {col}) FROM {table}"


def _shape_aggregate_where(rng, table, texts, numbers):
    target, col = rng.choice(list(texts)), rng.choice(list(numbers))
    function, words = rng.choice(_AGGREGATES)
    value = rng.choice(texts[target])
    question = rng.choice([f"What is the {rng.choice(words)} {_words(col)} of {table} with {_words(target)} {value}?",
                           f"Among {table} rows whose {_words(target)} is {value}, what is the {rng.choice(words)} "
                           f"{_words(col)}?"])
    return question, f"SELECT {function}({col}) FROM {table} WHERE {target} = {_literal(value)}"


def _shape_select_compare(rng, table, texts, numbers):
    show, col = rng.choice(list(texts)), rng.choice(list(numbers))
    op, phrases = rng.choice(_OPERATORS)
    value = _number(rng, numbers[col])
    question = rng.choice([f"List the {_words(show)} of {table} whose {_words(col)} is {rng.choice(phrases)} {value}.",
                           f"Which {_words(show)} have a {_words(col)} {rng.choice(phrases)} {value}?"])
    return question, f"SELECT {show} FROM {table} WHERE {col} {op} {value}"


#: Query shapes: name -> function(rng, table, text columns, numeric columns) -> (question, SQL).
SHAPES = {
    "value_where": _shape_value_where, "count_compare": _shape_count_compare, "and": _shape_and, "or": _shape_or,
    "between": _shape_between, "order_limit": _shape_top, "group_count": _shape_group_count,
    "group_aggregate": _shape_group_aggregate, "having": _shape_having, "count_distinct": _shape_count_distinct,
    "aggregate_where": _shape_aggregate_where, "select_compare": _shape_select_compare,
}


def create_table(table: str, texts: dict, numbers: dict, rng: random.Random) -> str:
    """The CREATE TABLE statement of one table, its columns in a seeded order."""
    columns = [(c, "VARCHAR") for c in texts] + [(c, spec[0]) for c, spec in numbers.items()]
    rng.shuffle(columns)
    return f"CREATE TABLE {table} ({', '.join(f'{c} {t}' for c, t in columns)})"


def make_rows(tables, n: int, seed: int) -> list[dict]:
    """`n` rows about `tables` (entries of `TABLES`), shapes drawn in turn so each appears equally."""
    rng = random.Random(seed)
    shapes = list(SHAPES.values())
    rows = []
    for i in range(n):
        table, texts, numbers = rng.choice(tables)
        question, answer = shapes[(i + seed) % len(shapes)](rng, table, texts, numbers)
        rows.append({"question": question, "context": create_table(table, texts, numbers, rng), "answer": answer})
    rng.shuffle(rows)
    return rows


def make_sql_splits(n_train: int, n_eval: int, seed: int = 0) -> dict[str, list[dict]]:
    """Train rows about the training tables and eval rows about the held-out `EVAL_TABLES`.

    Raises:
        ValueError: for a size below 1.
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"Both splits need at least one row, got n_train={n_train}, n_eval={n_eval}.")
    train_tables = [t for t in TABLES if t[0] not in EVAL_TABLES]
    eval_tables = [t for t in TABLES if t[0] in EVAL_TABLES]
    splits = {"train": make_rows(train_tables, n_train, seed), "eval": make_rows(eval_tables, n_eval, seed + 10_000)}
    assert (len(splits["train"]), len(splits["eval"])) == (n_train, n_eval)
    return splits


# ---------------------------------------------------------------------------------------------
# Execution match: the same result on the same data

#: Rows each table is filled with, fillings per comparison, and the sqlite3 steps a query may take.
FILL_ROWS = 16
FILLINGS = 4
STEP_BUDGET = 200_000
_STRING = re.compile(r"'((?:[^']|'')*)'|\"((?:[^\"]|\"\")*)\"")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_FILLER_WORDS = ["alpha", "bravo", "delta", "echo", "kilo", "zulu"]


def literals(sql: str) -> tuple[list[str], list[float]]:
    """The string and number literals a query mentions (what the filled rows must contain)."""
    strings = [(a or b).replace("''", "'").replace('""', '"') for a, b in _STRING.findall(sql)]
    without_strings = _STRING.sub(" ", sql)
    return strings, [float(n) for n in _NUMBER.findall(without_strings)]


def _fill_value(rng: random.Random, declared: str, strings: list[str], numbers: list[float], used: set):
    if any(word in declared.upper() for word in ("INT", "REAL", "FLOA", "DOUB", "NUM", "DEC")):
        pool = [n + d for n in numbers for d in (-1, 0, 1)] + [rng.uniform(0, 100) for _ in range(4)]
        for _ in range(20):  # distinct numbers per column: ORDER BY results do not depend on ties
            value = rng.choice(pool)
            value = int(value) if "INT" in declared.upper() else round(value, 1)
            if value not in used:
                used.add(value)
                return value
        return rng.randint(10**6, 10**7)
    if strings and rng.random() < 0.7:  # mostly the query's own values, so its conditions meet in some rows
        return rng.choice(strings)
    return rng.choice(_FILLER_WORDS[:3] if strings else _FILLER_WORDS)


def filled_database(context: str, reference: str, seed: int) -> sqlite3.Connection:
    """An in-memory database of `context`'s tables, each with `FILL_ROWS` seeded rows built from the
    reference query's literals (and their neighbours, for numbers) and a few other values.

    Raises:
        sqlite3.Error: the context is not valid SQL for sqlite3.
    """
    strings, numbers = literals(reference)
    rng = random.Random(seed)
    conn = sqlite3.connect(":memory:")
    conn.executescript(context)
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    for table in tables:
        columns = [(row[1], row[2] or "") for row in conn.execute(f'PRAGMA table_info("{table}")')]
        used: dict[str, set] = {name: set() for name, _ in columns}
        rows = [tuple(_fill_value(rng, declared, strings, numbers, used[name]) for name, declared in columns)
                for _ in range(FILL_ROWS)]
        conn.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(columns))})', rows)
    return conn


def _run(conn: sqlite3.Connection, sql: str) -> list[tuple]:
    steps = [0]

    def budget():  # a runaway query is cut off, not waited for
        steps[0] += 1
        return 1 if steps[0] > STEP_BUDGET // 1000 else 0

    conn.set_progress_handler(budget, 1000)
    rows = conn.execute(sql).fetchall()
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in rows]


def _same_result(got: list[tuple], want: list[tuple], ordered: bool) -> bool:
    return got == want if ordered else Counter(got) == Counter(want)


def execution_match(prediction: str, reference: str, context: str, seed: int = 0) -> dict:
    """Whether `prediction` returns what `reference` returns, on `FILLINGS` seeded fillings of `context`'s tables.

    Args:
        prediction: the model's SQL (already extracted from its answer).
        reference: the dataset's SQL.
        context: the example's CREATE TABLE statements.
        seed: picks the fillings (`seed` to `seed + FILLINGS - 1`).

    Returns:
        {"match": bool, "valid": whether sqlite3 ran the prediction, "error": sqlite's message or ""}.
        Results are compared in order when the reference has ORDER BY, else as multisets; floats
        to 6 decimals.
    """
    ordered = re.search(r"\border\s+by\b", reference, re.IGNORECASE) is not None
    if not prediction.strip():
        return {"match": False, "valid": False, "error": "no SQL query found in the answer"}
    match = True
    for filling in range(seed, seed + FILLINGS):
        try:
            conn = filled_database(context, reference, filling)
        except sqlite3.Error as err:
            return {"match": False, "valid": False, "error": f"the context is not valid SQL: {err}"}
        try:
            want = _run(conn, reference)
            try:
                got = _run(conn, prediction)
            except (sqlite3.Error, sqlite3.Warning, ValueError) as err:
                return {"match": False, "valid": False, "error": str(err)}
            match = match and _same_result(got, want, ordered)
        except (sqlite3.Error, sqlite3.Warning, ValueError) as err:
            return {"match": False, "valid": True, "error": f"the reference query fails: {err}"}
        finally:
            conn.close()
    return {"match": match, "valid": True, "error": ""}
