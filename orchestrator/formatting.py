"""How numbers, durations and table values are written for people and for JSON:
one home for each rule (the CLI's errors, status, the progress panel, tables)."""
from __future__ import annotations

import datetime as _dt
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
    if hasattr(v, "item"):  # numpy scalars
        return plain(v.item())
    return v
