"""How numbers, durations and table values are written for people and for JSON:
one home for each rule (the CLI's errors, status, the progress panel, `query`'s
formats, the report's cells)."""
from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
from typing import Optional


def number(x: float) -> str:
    """1.0 -> "1", 0.25 -> "0.25": resources and bounds as the yaml spells them."""
    return str(int(x)) if float(x).is_integer() else str(x)


def duration(s: Optional[float]) -> str:
    """Seconds as 42s, 3m07s or 2h05m ("unknown" for None)."""
    if s is None:
        return "unknown"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def plain(v):
    """A JSON/text-friendly Python value: NaN/NA/NaT -> None, timestamps -> ISO,
    numpy scalars -> Python ones."""
    import pandas as pd  # only where tables are written
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (pd.Timestamp, _dt.datetime, _dt.date)):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):  # a binary column (test_correct): base64, as the manifests hold it
        return base64.b64encode(v).decode("ascii")
    if hasattr(v, "item"):  # numpy scalars
        return plain(v.item())
    return v


def first_line(e: BaseException) -> str:
    """An exception as one line (a user-facing error quotes pyarrow's or duckdb's)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --- measured values in tables: a missing one is shown as such, never as zero ---

MISSING = "–"


def _missing(v) -> bool:
    import pandas as pd
    return v is None or (not isinstance(v, str) and bool(pd.isna(v)))


def fixed(v) -> str:
    """An accuracy, density or gain to 4 decimals."""
    return MISSING if _missing(v) else f"{v:.4f}"


def pm(mean, std) -> str:
    """mean ± std; no std (one seed) is left out rather than shown as ± 0."""
    if _missing(mean):
        return MISSING
    return f"{mean:.4f}" if _missing(std) else f"{mean:.4f} ± {std:.4f}"


def interval(lo, hi) -> str:
    return MISSING if _missing(lo) or _missing(hi) else f"[{lo:+.4f}, {hi:+.4f}]"


def p_text(v) -> str:
    """A p-value: 3 decimals, or 2 significant digits below 0.001 (never a bare 0.000)."""
    return MISSING if _missing(v) else f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


def value_text(v) -> str:
    """A spec value (an augmentation, a width, an imbalance) as the yaml spells it."""
    return MISSING if _missing(v) else f"{v:g}" if isinstance(v, float) else str(v)


# --- whole frames: `query`'s output formats and the report's Markdown ------------

FRAME_FORMATS = ("table", "csv", "json", "markdown")


def _cell(v) -> str:
    if type(v) is str:  # the common cells first: `plan` formats 10,000 x 14 of them
        return v
    if type(v) is int:
        return str(v)
    if v is None:  # (without plain(), which imports pandas: `plan` has none to import)
        return ""
    if type(v) is float:
        return "" if math.isnan(v) else f"{v:.4f}"
    if isinstance(v, (bytes, bytearray)):  # for people, a size: the bits are for programs
        return f"<{len(v)} bytes>"
    p = plain(v)
    return "" if p is None else f"{p:.4f}" if isinstance(p, float) else str(p)


def format_frame(df, fmt: str = "table") -> str:
    """A DataFrame as an aligned text table, CSV, a JSON list of row objects or Markdown."""
    import pandas as pd
    if fmt == "json":
        cols = list(df.columns)
        rows = [{c: plain(v) for c, v in zip(cols, row)} for row in df.itertuples(index=False)]
        return json.dumps(rows, default=str, allow_nan=False)
    if fmt == "csv":
        blobs = [c for c in df.columns if df[c].dtype == object and any(isinstance(v, bytes) for v in df[c])]
        df = df.assign(**{c: df[c].map(plain) for c in blobs}) if blobs else df
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        return buf.getvalue()
    if fmt == "markdown":
        head = "| " + " | ".join(map(str, df.columns)) + " |"
        rule = "|" + "|".join("---" for _ in df.columns) + "|"
        body = ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |"
                for row in df.itertuples(index=False)]
        return "\n".join([head, rule] + body)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: use {', '.join(FRAME_FORMATS)}")
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    return format_rows([str(c) for c in df.columns], df.itertuples(index=False), numeric)


def format_records(records: list[dict]) -> str:
    """Row dicts as `format_frame(pd.DataFrame(records))` prints them: numeric
    columns (every value present an int, float or bool) right-aligned."""
    cols = list(dict.fromkeys(k for r in records for k in r))
    numeric = [all(type(r.get(c)) in (int, float, bool) for r in records if r.get(c) is not None) for c in cols]
    return format_rows(cols, ([r.get(c) for c in cols] for r in records), numeric)


def format_rows(cols: list, rows, numeric: list) -> str:
    """Rows (sequences of values, in `cols`' order) as `format_frame`'s aligned
    text table, numeric columns right-aligned; without pandas, which a large
    `plan` would spend more time importing and iterating than formatting."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])
