"""bench/init_study.py: docs/imp.md's init table is a paired difference between schemes."""
import math

import pandas as pd

from bench.init_study import table


def test_the_table_pairs_schemes_by_size_and_seed():
    rows = []
    for seed, (dp, dt, tp, tt) in enumerate([(0.5, 0.4, 0.8, 0.6), (0.6, 0.6, 0.9, 0.7), (0.7, 0.5, 0.7, 0.8)]):
        rows += [{"images_per_class": 5, "seed": seed, "scheme": "paper", "dense": dp, "ticket": tp, "gain": tp - dp},
                 {"images_per_class": 5, "seed": seed, "scheme": "torchvision", "dense": dt, "ticket": tt,
                  "gain": tt - dt}]
    out = table(pd.DataFrame(rows)).splitlines()[2].split(" | ")
    assert out[0] == "| 5" and out[1] == "3"
    assert out[2] == "0.600 / 0.500" and out[3] == "0.800 / 0.700"
    # dense differences 0.1, 0.0, 0.2: mean 0.1, t interval 0.1 +- 4.303 * 0.1 / sqrt(3)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert out[5].startswith(f"+0.100 [{0.1 - half:+.3f}, {0.1 + half:+.3f}] p ")
    # each difference's paired t-test p, and Holm over the table's 3 differences (one size)
    from scipy import stats
    diffs = {"dense": [0.1, 0.0, 0.2], "ticket": [0.2, 0.2, -0.1], "gain": [0.1, 0.2, -0.3]}
    ps = [2 * stats.t.sf(abs(sum(d) / 3) / (pd.Series(d).std() / math.sqrt(3)), 2) for d in diffs.values()]
    order = sorted(range(3), key=lambda i: ps[i])
    holm, running = [0.0] * 3, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * ps[i]))
        holm[i] = running
    for cell, p, h in zip(out[5:8], ps, holm):
        assert cell.rstrip(" |").endswith(f" p {p:.2g}, Holm {h:.2g}"), (cell, p, h)
