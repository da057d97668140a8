"""Scoring a model's answer: what "the same answer" means for short answers, maths and SQL.

Pure text functions (the standard library's `re` only), shown in notebook 03 and used by
`lora_lab.training.evaluate.score`, which adds sqlite3's verdict on SQL:

- `normalise_answer`: case, spaces, a final full stop and thousands separators do not count.
- `final_answer` / `normalise_number`: a free-form maths solution scored on its final number
  ("#### 18", a LaTeX \\boxed{18}, the last "the answer is 18", else its last number).
- `extract_sql` / `normalise_sql`: the query in a chatty answer, compared token by token with
  keywords and names lower-cased and string literals kept as written.
"""

from __future__ import annotations

import re


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, no final full stop, no thousands separators in numbers."""
    text = " ".join(str(text).strip().lower().split())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return text.rstrip(".").strip()


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def normalise_number(text: str) -> str:
    """A number as GSM8K writes its final answers: no currency sign, thousands separator or trailing .0.

    "$1,234.00" -> "1234", "-3.50" -> "-3.5", "0.25" -> "0.25". Text that holds no number is
    returned lower-cased and stripped, so that it can still be compared.
    """
    text = str(text).strip()
    match = re.search(_NUMBER, text.replace("$", "").replace("€", "").replace("£", ""))
    if not match:
        return text.lower().rstrip(".")
    number = match.group(0).replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    if number in ("", "-", "-0"):
        number = "0"
    return number


def _boxed(text: str) -> str | None:
    """The content of the last \boxed{...} in `text` (braces may nest), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def final_answer(prediction: str) -> str:
    """The final numeric answer of a free-form maths solution, normalised (see `normalise_number`).

    Looks, in this order, for: what follows '####' (GSM8K's own format); a LaTeX ``\boxed{...}``;
    "the answer is ..." / "answer: ..." (the last such phrase); else the last number in the text.
    An instruct model that explains its working in its own words is scored on its result, not on
    its format. Returns "" when the text holds no number at all.
    """
    text = str(prediction)
    if "####" in text:
        tail = text.split("####")[-1].strip().splitlines()
        if tail and re.search(_NUMBER, tail[0]):
            return normalise_number(tail[0])
    boxed = _boxed(text)
    if boxed is not None and re.search(_NUMBER, boxed.replace("{", " ").replace("}", " ")):
        return normalise_number(boxed.replace("{", " ").replace("}", " "))
    phrases = list(re.finditer(r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*:)\s*:?\s*\**\s*([$€£]?\s*(?:" + _NUMBER + "))",
                               text, flags=re.IGNORECASE))
    if phrases:
        return normalise_number(phrases[-1].group(1))
    numbers = re.findall(r"[$€£]?\s*(?:" + _NUMBER + ")", text)
    numbers = [n for n in numbers if re.search(r"\d", n)]
    return normalise_number(numbers[-1]) if numbers else ""


_SQL_START = re.compile(r"\b(SELECT|WITH)\b", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:sql|sqlite)?[ \t]*\n?(.*?)```", re.IGNORECASE | re.DOTALL)
_PROSE_LINE = re.compile(r"^\s*(?:This|The|Here|Note|Explanation|It|In this|That|These|We|I )\b")
_SQL_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|\d+(?:\.\d+)?|\w+|<=|>=|<>|!=|==|\|\||\S")


def extract_sql(text: str) -> str:
    """The SQL query in a model's answer, without the prose around it.

    Handles a fenced code block (```sql ... ```), a "SQL:" or "Query:" prefix, a sentence before the
    query ("Here is the query: SELECT ..."), and explanations after it (after a semicolon, a blank
    line, a line of prose, or a sentence starting on the same line). Returns "" when there is no
    SELECT or WITH statement.
    """
    text = str(text)
    fence = _FENCE.search(text)
    if fence:
        text = fence.group(1)
    start = _SQL_START.search(text)
    if not start:
        return ""
    sql = text[start.start():]
    sql = _cut_outside_quotes(sql)
    lines = []
    for line in sql.split("\n"):
        if not line.strip() or (lines and _PROSE_LINE.match(line)):
            if lines:
                break
            continue
        lines.append(line)
    return " ".join(" ".join(lines).split()).rstrip(";").strip().rstrip(".").strip()


def _cut_outside_quotes(sql: str) -> str:
    """`sql` up to its first semicolon or its first sentence of prose, ignoring both inside quotes."""
    quote = None
    for i, ch in enumerate(sql):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"`":
            quote = ch
        elif ch == ";":
            return sql[:i]
        elif ch == "." and re.match(r"\.\s+[A-Z][a-z]", sql[i:i + 4]) and not re.match(r"\d", sql[i + 1:i + 2]):
            return sql[:i]
    return sql


def normalise_sql(sql: str) -> str:
    """SQL as tokens joined by single spaces: keywords and names lower-cased, string literals kept.

    Spacing, case outside quotes, the quote character of string literals ('x' or "x") and a final
    semicolon do not change the normalised form; anything else does.
    """
    tokens = []
    for tok in _SQL_TOKEN.findall(str(sql).strip().rstrip(";")):
        if tok[0] in "'\"" and len(tok) >= 2:
            tokens.append("'" + tok[1:-1] + "'")
        else:
            tokens.append(tok.lower())
    return " ".join(tokens)
