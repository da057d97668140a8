"""The course's instruction data: synthetic tasks for the `cpu` profile, a Hub dataset for `t4`.

The `cpu` profile needs data that nothing downloads and whose answers can be checked exactly.
So the package invents a small world: a few hundred made-up entities, each with a colour, a home
city, a favourite food and a pet. The tiny base model is pretrained on plain sentences stating
these facts (`fact_sentences`). Fine-tuning then teaches behaviours in chat form, one family each:

- ``recall``: answer a question about an entity from memory ("what is the color of mipoka ?"
  -> "orange"). Held-out entities' facts were seen only in pretraining: SFT adds the behaviour,
  pretraining supplied the knowledge.
- ``extract``: the facts are in the prompt; answer the one asked about (extraction).
- ``format``: the facts are in the prompt; rewrite them as a fixed ``key = value`` record
  (formatting / transformation).

Every example is a chat conversation (`messages`: a list of ``{"role", "content"}``) with the exact
answer beside it (`answer`) and its family (`task`). `to_prompt_completion` turns it into trl's
conversational prompt/completion form so that only the answer carries loss.

The `t4` profile loads a real Hub dataset and normalises it to the same schema
(`load_hub_dataset`), then everything downstream is shared. `validate` refuses data with a clear
message instead of training on nothing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict

from lora_lab.runtime.hub import hub_errors

#: The roles a chat message may have.
ROLES = ("system", "user", "assistant")
#: The course's task families, in the order notebooks list them.
TASK_FAMILIES = ("recall", "extract", "format")

# Vocabulary of the invented world. Kept to plain lowercase words so a small tokenizer covers it.
COLORS = ("red", "blue", "green", "yellow", "orange", "purple", "black", "white", "brown", "pink")
CITIES = ("tokyo", "paris", "lima", "oslo", "cairo", "delhi", "rome", "quito", "seoul", "dakar")
FOODS = ("rice", "bread", "soup", "cheese", "apples", "fish", "beans", "noodles", "honey", "corn")
PETS = ("cat", "dog", "horse", "parrot", "rabbit", "turtle", "goat", "snake", "frog", "owl")
ATTRIBUTES = {"color": COLORS, "city": CITIES, "food": FOODS, "pet": PETS}
_SYLLABLES = (
    "ba ke mi po ra lu to ne si da vo ki ma zu fe ri go la te nu "
    "sa pe di mo ru ka ze ho bi ta"
).split()


@dataclass(frozen=True)
class Entity:
    """One made-up entity and its four facts."""

    name: str  # e.g. "mipoka"
    color: str  # one of COLORS
    city: str  # one of CITIES
    food: str  # one of FOODS
    pet: str  # one of PETS


@dataclass(frozen=True)
class World:
    """The invented world: entities split into those SFT trains on and those it is tested on."""

    train_entities: tuple[Entity, ...]  # their questions appear in SFT training data
    eval_entities: tuple[Entity, ...]  # only their facts were seen, in pretraining

    @property
    def entities(self) -> tuple[Entity, ...]:
        return self.train_entities + self.eval_entities


def make_world(n_entities: int = 300, eval_fraction: float = 1 / 3, seed: int = 0) -> World:
    """Invent `n_entities` entities with unique names and random facts, deterministically.

    Raises:
        ValueError: if the sizes are impossible (too few syllables for that many unique names,
            or a split that leaves either side empty).
    """
    if n_entities < 3:
        raise ValueError(f"n_entities must be at least 3, got {n_entities}.")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}.")
    capacity = len(_SYLLABLES) ** 3
    if n_entities > capacity // 2:
        raise ValueError(f"At most {capacity // 2} entities can get unique three-syllable names.")
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n_entities:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(3))
        if name in seen or name in COLORS + CITIES + FOODS + PETS:
            continue
        seen.add(name)
        names.append(name)
    entities = [Entity(name, rng.choice(COLORS), rng.choice(CITIES), rng.choice(FOODS), rng.choice(PETS)) for name in names]
    n_eval = round(n_entities * eval_fraction)
    world = World(tuple(entities[n_eval:]), tuple(entities[:n_eval]))
    # Silent shrinkage here once produced an empty eval set that scored 0%: check the split.
    assert len(world.train_entities) == n_entities - n_eval and len(world.eval_entities) == n_eval
    assert len({e.name for e in world.entities}) == n_entities
    return world


def fact_text(entity: Entity, attribute: str) -> str:
    """The pretraining sentence stating one fact."""
    value = getattr(entity, attribute)
    return {
        "color": f"the color of {entity.name} is {value} .",
        "city": f"{entity.name} lives in {value} .",
        "food": f"{entity.name} likes to eat {value} .",
        "pet": f"the pet of {entity.name} is a {value} .",
    }[attribute]


def question_text(entity: Entity, attribute: str) -> str:
    """The question asking for one fact."""
    return {
        "color": f"what is the color of {entity.name} ?",
        "city": f"where does {entity.name} live ?",
        "food": f"what does {entity.name} like to eat ?",
        "pet": f"what pet does {entity.name} have ?",
    }[attribute]


def fact_sentences(world: World | None = None) -> list[str]:
    """Every fact of every entity as a sentence: the tiny base model's pretraining corpus."""
    world = world or make_world()
    return [fact_text(e, a) for e in world.entities for a in ATTRIBUTES]


def pretraining_corpus(world: World, n_docs: int, seed: int = 0, max_facts: int = 3) -> list[str]:
    """`n_docs` short documents of 1 to `max_facts` facts about one entity, in random order.

    Mixing several facts of the same entity in one document gives the model some structure
    beyond single sentences (the entity carries across the document).
    """
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        entity = rng.choice(world.entities)
        attrs = rng.sample(list(ATTRIBUTES), rng.randint(1, max_facts))
        docs.append(" ".join(fact_text(entity, a) for a in attrs))
    return docs


def _example(task: str, entity: Entity, rng: random.Random) -> dict:
    """One chat example of the given family about `entity`."""
    if task == "recall":
        attribute = rng.choice(list(ATTRIBUTES))
        prompt = question_text(entity, attribute)
        answer = getattr(entity, attribute)
    elif task == "extract":
        attrs = rng.sample(list(ATTRIBUTES), 3)
        asked = rng.choice(attrs)
        facts = " ".join(fact_text(entity, a) for a in attrs)
        prompt = f"text : {facts} question : {question_text(entity, asked)}"
        answer = getattr(entity, asked)
    elif task == "format":
        attrs = sorted(rng.sample(list(ATTRIBUTES), 2))
        facts = " ".join(fact_text(entity, a) for a in attrs)
        prompt = f"write as a record : {facts}"
        answer = " ; ".join([f"name = {entity.name}"] + [f"{a} = {getattr(entity, a)}" for a in attrs])
    else:
        raise ValueError(f"Unknown task family {task!r}. Choose from: {', '.join(TASK_FAMILIES)}.")
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        "answer": answer,
        "task": task,
        "entity": entity.name,
    }


def make_examples(task: str, entities: Sequence[Entity], per_entity: int, seed: int) -> list[dict]:
    """`per_entity` examples of one family for each entity, shuffled deterministically."""
    rng = random.Random(f"{task}-{seed}")
    examples = [_example(task, e, rng) for e in entities for _ in range(per_entity)]
    rng.shuffle(examples)
    return examples


def course_splits(
    tasks: Iterable[str] = ("recall",),
    world: World | None = None,
    train_per_entity: int = 4,
    n_eval: int = 100,
    seed: int = 0,
) -> DatasetDict:
    """The course tasks as a DatasetDict with `train` and `eval` splits.

    Train examples are about the world's train entities; eval examples about the held-out ones
    (for ``recall`` this is what makes exact match meaningful: those answers were never in SFT data).

    Args:
        tasks: task families to include (see TASK_FAMILIES).
        world: the invented world; `make_world()` by default (the one the tiny model learned).
        train_per_entity: examples per train entity and family.
        n_eval: held-out examples in total, spread evenly over the families.
        seed: picks the questions; same seed, same data.
    """
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError(f"Pass at least one task family: {', '.join(TASK_FAMILIES)}.")
    for t in tasks:
        if t not in TASK_FAMILIES:
            raise ValueError(f"Unknown task family {t!r}. Choose from: {', '.join(TASK_FAMILIES)}.")
    if train_per_entity < 1 or n_eval < 1:
        raise ValueError("train_per_entity and n_eval must be positive.")
    world = world or make_world()
    train, evals = [], []
    for i, task in enumerate(tasks):
        train += make_examples(task, world.train_entities, train_per_entity, seed)
        share = n_eval // len(tasks) + (1 if i < n_eval % len(tasks) else 0)
        pool = make_examples(task, world.eval_entities, 1 + share // max(1, len(world.eval_entities)), seed + 1)
        evals += pool[:share]
    random.Random(seed).shuffle(train)
    if len(evals) != n_eval:
        raise ValueError(f"Only {len(evals)} held-out examples could be made, {n_eval} were asked for: pass a "
                         f"smaller eval size (--eval-size {len(evals)} or n_eval=...).")
    return DatasetDict(train=Dataset.from_list(train), eval=Dataset.from_list(evals))


# ---------------------------------------------------------------------------------------------
# Validation and conversion


def validate(dataset, name: str = "dataset") -> None:
    """Refuse data that would train on nothing, score against nothing, or crash half-way.

    Checks: a list or `Dataset` of rows (not a dict of columns, not a string); not empty; each
    row a mapping with a `messages` list of ``{"role", "content"}`` dicts with a known role and
    string content; at least one assistant message; the conversation ends on an assistant turn
    (the answer that carries loss); no assistant answer (nor `answer` reference) empty or only
    whitespace: an empty reference would score 100% exact match against an empty generation.

    Raises:
        ValueError: naming the first offending example and what to change.
    """
    if isinstance(dataset, (str, bytes)) or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError(f"The {name} must be a list of examples or a datasets.Dataset, got "
                         f"{type(dataset).__name__}: load it first (lora_lab.training.data.read_data_file(path)).")
    if isinstance(dataset, Mapping):
        what = "a DatasetDict: pass one split, e.g. splits['train']" if isinstance(dataset, DatasetDict) else (
            "a dict of columns: pass a list of rows, or datasets.Dataset.from_dict(columns)")
        raise ValueError(f"The {name} is {what}.")
    if len(dataset) == 0:
        raise ValueError(f"The {name} is empty: nothing to train or evaluate on.")
    first = dataset[0]
    if not isinstance(first, Mapping):
        raise ValueError(f"Example 0 of the {name} is a {type(first).__name__} ({str(first)[:40]!r}), not a row: "
                         "each example must be a mapping like {'messages': [...]}.")
    columns = getattr(dataset, "column_names", None) or list(first.keys())
    if "messages" not in columns:
        raise ValueError(
            f"The {name} has no 'messages' column (it has: {', '.join(map(str, columns))}). Convert it with "
            "lora_lab.training.data.normalise(...) or map each row to "
            "{'messages': [{'role': 'user', 'content': ...}, {'role': 'assistant', 'content': ...}]}."
        )
    for i, row in enumerate(dataset):
        if not isinstance(row, Mapping):
            raise ValueError(f"Example {i} of the {name} is a {type(row).__name__}, not a row: each example "
                             "must be a mapping like {'messages': [...]}.")
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"Example {i} of the {name}: 'messages' must be a non-empty list of messages.")
        for j, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ValueError(f"Example {i}, message {j}: each message needs 'role' and 'content' fields.")
            if m["role"] not in ROLES:
                raise ValueError(
                    f"Example {i}, message {j}: unknown role {m['role']!r}; use one of {', '.join(ROLES)}."
                )
            if not isinstance(m["content"], str):
                raise ValueError(
                    f"Example {i}, message {j}: content must be a string, got {type(m['content']).__name__}."
                )
            if m["role"] == "assistant" and not m["content"].strip():
                raise ValueError(
                    f"Example {i} of the {name}, message {j}: the assistant's answer is empty. Training on it "
                    "teaches the model to say nothing, and an empty reference scores 100% exact match: fill in "
                    "the answer or drop the example."
                )
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"Example {i} of the {name} has no assistant message: it would carry no loss. "
                             "Add the assistant's answer or drop the example.")
        if messages[-1]["role"] != "assistant":
            raise ValueError(
                f"Example {i} of the {name} ends on a {messages[-1]['role']} turn: only the last assistant answer "
                "carries loss, so what follows it would be silently dropped. End each conversation with the "
                "assistant's answer."
            )
        answer = row.get("answer")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            raise ValueError(
                f"Example {i} of the {name}: the 'answer' reference is empty, so exact match would score an empty "
                "generation as correct. Fill in 'answer' or drop the column."
            )


def to_prompt_completion(dataset: Dataset) -> Dataset:
    """Split each conversation before its last assistant message (trl's conversational form).

    With `prompt` and `completion` columns, trl's SFTTrainer puts loss on the completion only.
    """
    validate(dataset)

    def split(row):
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return {"prompt": messages[:last], "completion": messages[last:]}

    return dataset.map(split, remove_columns=["messages"])


# ---------------------------------------------------------------------------------------------
# The t4 profile's Hub dataset, normalised to the same schema


def gsm8k_answer(text: str) -> str:
    """The final answer of a GSM8K solution: what follows '####', without commas or spaces."""
    if "####" not in text:
        return ""
    return text.split("####")[-1].strip().replace(",", "").rstrip(".")


def sql_prompt(question: str, context: str) -> str:
    """The user turn of a text-to-SQL example: the tables, the question, and the form of the answer."""
    return (f"Tables:\n{context.strip()}\n\nQuestion: {question.strip()}\n"
            "Answer with one SQLite query and nothing else.")


#: The text fields each known layout needs in every row (the optional ones may be empty or missing).
_LAYOUT_FIELDS = ((("question", "context", "answer"), ()), (("question", "answer"), ()),
                  (("instruction", "output"), ("input",)), (("instruction", "response"), ("context",)))


def _check_source_rows(dataset, source: str, cols: set) -> None:
    """Rows checked in their original order, before any mapping: `messages` rows by `validate`, the other
    layouts' fields as text (not null, not a number), each problem named by its example number in the file
    (counted from 0, as `validate` does)."""
    if "messages" in cols:
        validate(dataset, source)
        return
    layout = next(((need, may) for need, may in _LAYOUT_FIELDS if set(need) <= cols), None)
    if layout is None:
        return  # an unknown layout: `normalise` names the columns it found
    required, optional = layout
    for i, row in enumerate(dataset):
        for name in required:
            if not isinstance(row.get(name), str) or not row[name].strip():
                raise ValueError(f"Example {i} of {source}: '{name}' must be non-empty text, got {row.get(name)!r}.")
        for name in optional:
            if row.get(name) is not None and not isinstance(row[name], str):
                raise ValueError(f"Example {i} of {source}: '{name}' must be text or empty, got {row[name]!r}.")


def normalise(dataset: Dataset, source: str) -> Dataset:
    """Map a Hub dataset's own columns to the course schema (messages, answer, task).

    Supported layouts: `messages` (already chat), `question`/`context`/`answer` (text-to-SQL,
    b-mc2/sql-create-context: task "sql", `context` kept), `question`/`answer` (GSM8K: task "gsm8k"),
    `instruction`/`input`/`output` (Alpaca-style), `instruction`/`context`/`response` (Dolly).

    Raises:
        ValueError: for a layout we do not know, naming the columns found.
    """
    cols = set(dataset.column_names)
    _check_source_rows(dataset, source, cols)
    if "messages" in cols:
        out = dataset
        if "answer" not in cols:
            out = out.map(lambda r: {"answer": r["messages"][-1]["content"]})
        if "task" not in cols:
            out = out.map(lambda r: {"task": source})
        return out
    if {"question", "context", "answer"} <= cols:  # b-mc2/sql-create-context: text-to-SQL
        def row(r):
            return {
                "messages": [{"role": "user", "content": sql_prompt(r["question"], r["context"])},
                             {"role": "assistant", "content": r["answer"]}],
                "answer": r["answer"],
                "context": r["context"],  # the CREATE TABLE statements sqlite3 checks answers against
                "task": "sql",
            }
    elif {"question", "answer"} <= cols:  # GSM8K: scored on the final number
        def row(r):
            return {
                "messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}],
                "answer": gsm8k_answer(r["answer"]) or r["answer"],
                "task": "gsm8k",
            }
    elif {"instruction", "output"} <= cols:
        def row(r):
            prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
            return {
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"]}],
                "answer": r["output"],
                "task": source,
            }
    elif {"instruction", "response"} <= cols:
        def row(r):
            prompt = r["instruction"] + (f"\n\n{r['context']}" if r.get("context") else "")
            return {
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["response"]}],
                "answer": r["response"],
                "task": source,
            }
    else:
        raise ValueError(
            f"Don't know how to read {source}: its columns are {sorted(cols)}. Expected 'messages', "
            "'question'+'answer', 'instruction'+'output' or 'instruction'+'response'."
        )
    return dataset.map(row, remove_columns=sorted(cols))


#: Single data files `--dataset` accepts, by suffix.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _json_rows(path: Path, text: str) -> list:
    """Rows of a JSON Lines text (one object per line), or a ValueError naming the file and line."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not valid JSON ({err.msg} at column {err.colno}). Each line of a "
                             ".jsonl file must be one JSON object, e.g. {\"messages\": [...]}.") from None
    return rows


def read_data_file(path) -> Dataset:
    """One data file as a `Dataset`: JSON Lines (.jsonl), JSON (.json: a list of rows, or JSON Lines), Parquet.

    Raises:
        ValueError: the file is missing, empty, malformed (naming the line) or holds rows that are
            not objects, or its suffix is not one of DATA_FILE_SUFFIXES.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Data file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in DATA_FILE_SUFFIXES:
        raise ValueError(f"{path}: unsupported data file; use one of {', '.join(DATA_FILE_SUFFIXES)}.")
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: not a readable Parquet file ({err}).") from None
    else:
        raw_bytes = path.read_bytes()
        try:
            text = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw_bytes.count(b"\n", 0, err.start) + 1
            raise ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw_bytes[err.start]:02x}): save the file "
                             "as UTF-8 (it looks like another encoding, e.g. Latin-1).") from None
        if not text.strip():
            raise ValueError(f"{path} is empty: it holds no examples.")
        if suffix == ".json":
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as err:
                if err.msg != "Extra data":  # "Extra data": a .json file written as JSON Lines
                    raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg} at column "
                                     f"{err.colno}).") from None
                loaded = _json_rows(path, text)
            rows = loaded if isinstance(loaded, list) else loaded.get("data") if isinstance(loaded, dict) else None
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a list of examples (or JSON Lines), got {type(loaded).__name__}.")
        else:
            rows = _json_rows(path, text)
    if not rows:
        raise ValueError(f"{path} is empty: it holds no examples.")
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}, example {n}: expected a JSON object like {{\"messages\": [...]}}, "
                             f"got {type(row).__name__} {str(row)[:40]!r}.")
    try:
        return Dataset.from_list(rows)
    except Exception as err:  # pyarrow cannot type the column (e.g. a number where others have text)
        raise ValueError(f"{path}: the examples do not share one layout ({type(err).__name__}: "
                         f"{str(err)[:200]}). Give every row the same fields with the same types.") from None


def looks_like_a_path(name: str) -> bool:
    """A local path rather than a Hub id (owner/name): starts with '.', '/' or '~', has a data file's suffix, or
    more than one '/'."""
    name = str(name)
    return (name.startswith((".", "/", "~")) or name.lower().endswith(DATA_FILE_SUFFIXES) or name.count("/") > 1
            or "\\" in name)


def _check_eval_size(n_rows: int, n_eval: int, source: str) -> None:
    """Refuse an eval split that would take all (or more than all) of a dataset's rows."""
    if n_eval < 1:
        raise ValueError(f"The eval size must be at least 1, got {n_eval}.")
    if n_rows <= n_eval:
        raise ValueError(
            f"{source} has {n_rows} examples, and the eval split needs {n_eval} plus at least one to train on: "
            f"pass a smaller eval size (--eval-size {max(1, n_rows // 5)}, or n_eval=...) or use more data."
        )


def load_hub_dataset(dataset_id: str, config: str | None = None, n_eval: int = 100, seed: int = 0, loader=None):
    """Load a Hub instruction dataset, a data folder or one data file, normalised with `train` and `eval` splits.

    Args:
        dataset_id: Hub id, a local folder that `datasets.load_dataset` understands, or one
            .jsonl/.json/.parquet file (`read_data_file`).
        config: the dataset's configuration name (GSM8K: "main").
        n_eval: held-out examples, taken from the test split if there is one, else from train.
        loader: stands in for `datasets.load_dataset` (tests pass a local loader; no network).

    Raises:
        ValueError: an unreadable or empty file, an unknown layout, bad rows, or fewer examples
            than the eval split needs.
    """
    if loader is None and Path(dataset_id).is_file():
        raw = read_data_file(dataset_id)
    elif loader is None and looks_like_a_path(dataset_id) and not Path(dataset_id).exists():
        raise ValueError(f"No data file or folder {dataset_id}: check the path (a Hub dataset id is owner/name).")
    else:
        if loader is None:
            from datasets import load_dataset as loader
        with hub_errors(dataset_id, "dataset"):  # one line saying what to do when the Hub cannot serve it
            raw = loader(dataset_id, config) if config else loader(dataset_id)
    if isinstance(raw, Dataset):
        raw = DatasetDict(train=raw)
    train = normalise(raw["train"], dataset_id)
    held = raw.get("test") or raw.get("validation")
    if held is not None:
        evals = normalise(held, dataset_id).shuffle(seed=seed).select(range(min(n_eval, len(held))))
    else:
        _check_eval_size(len(train), n_eval, dataset_id)
        parts = train.train_test_split(test_size=n_eval, seed=seed)
        train, evals = parts["train"], parts["test"]
    validate(train, f"{dataset_id} train split")
    validate(evals, f"{dataset_id} eval split")
    return DatasetDict(train=train, eval=evals)


def course_sql_dataset(n_train: int, n_eval: int, seed: int = 0) -> DatasetDict:
    """The cpu profile's text-to-SQL rows in b-mc2/sql-create-context's own columns (question, context,
    answer), generated by `lora_lab.standins.sql_task`: `train`, and `test` on schemas that `train` never shows."""
    from lora_lab.standins.sql_task import make_sql_splits

    rows = make_sql_splits(n_train=n_train, n_eval=n_eval, seed=seed)
    return DatasetDict(train=Dataset.from_list(rows["train"]), test=Dataset.from_list(rows["eval"]))


def load_profile_dataset(profile, loader=None) -> DatasetDict:
    """The train/eval data of a run profile: generated SQL for `cpu`, course tasks for the tiny model,
    the Hub dataset for `t4`."""
    from lora_lab.runtime.profiles import COURSE_SQL_ID, COURSE_TASKS_ID

    if profile.dataset_id == COURSE_TASKS_ID:
        splits = course_splits(profile.tasks, n_eval=profile.n_eval, seed=profile.seed)
    elif profile.dataset_id == COURSE_SQL_ID:  # read through the same normalising code as the Hub dataset
        generated = course_sql_dataset(profile.n_train or 480, profile.n_eval, profile.seed)
        splits = load_hub_dataset(COURSE_SQL_ID, None, profile.n_eval, profile.seed, lambda _id: generated)
    else:
        if loader is None and getattr(profile, "rehearsal", False):  # local files in the Hub dataset's format
            from lora_lab.standins.standin_data import load_standin_dataset as loader
        splits = load_hub_dataset(profile.dataset_id, profile.dataset_config, profile.n_eval, profile.seed, loader)
    if profile.n_train is not None:
        splits["train"] = splits["train"].select(range(min(profile.n_train, len(splits["train"]))))
    return splits
