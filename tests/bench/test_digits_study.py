"""bench/digits_study.py: docs/statistics.md's table is compare()'s numbers, and the
cells it names as surviving are exactly those with p_holm below 0.05."""
import pandas as pd

from bench.digits_study import survivors, table


def _compare():
    return pd.DataFrame({
        "images_per_class": [10, 5, 5], "augmentation": ["none", "basic", "none"], "n_seeds": [5, 5, 4],
        "dense_test_acc": [0.8, 0.5, 0.7], "dense_test_std": [0.01, 0.07, 0.03],
        "ticket_test_acc": [0.83, 0.64, 0.71], "ticket_test_std": [0.02, 0.02, 0.03],
        "ticket_density": [0.34, 0.21, 0.48], "gain": [0.03, 0.14, 0.01],
        "gain_ci_low": [0.01, 0.08, None], "gain_ci_high": [0.05, 0.2, None],
        "p_value": [0.004, 0.0002, 0.3], "p_holm": [0.008, 0.0006, 0.3], "prob_ticket_better": [1.0, 1.0, 0.625]})


def test_the_table_is_the_compare_rows_in_size_order():
    rows = table(_compare()).splitlines()
    assert rows[2] == ("| 5 | none | 4 | 0.700 ± 0.030 | 0.710 ± 0.030 | 0.48 | +0.010 | – | 0.300 | 0.300 | 0.6 |")
    assert rows[3] == ("| 5 | basic | 5 | 0.500 ± 0.070 | 0.640 ± 0.020 | 0.21 | +0.140 | [+0.080, +0.200] | "
                       "2.0e-04 | 6.0e-04 | 1.0 |")
    assert rows[4].startswith("| 10 | none | 5 |") and len(rows) == 5


def test_only_cells_below_the_holm_threshold_survive():
    assert survivors(_compare()) == ["5/class basic (+0.140)", "10/class none (+0.030)"]
