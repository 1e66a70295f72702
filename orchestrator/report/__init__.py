"""`lth-sweep report`: the paper's figures (PNG) and tables for one sweep, as
report.md (linking the PNGs) and a self-contained report.html (embedding them).

Works on a partial sweep: a figure or table whose data is not there (yet) is
skipped with a one-line note, and a missing cell stays missing, never zero.
By concern:

    derive.py            pure pandas: trial summary, Table 1's numbers, figure data
    items.py             what a view builds (Plot, Table, Skip) and is given (ReportInputs)
    views.py             which figures and tables, in what order, titles and captions
    evaluation_views.py  the built-in evaluations' views (robustness, probe, CKA)
    figures.py           matplotlib: tidy frames in, PNG bytes out
    render.py            Markdown, HTML, the files: write_report
"""
from .derive import (accuracy_vs_density, best_augmentation, capacity_bars, datasets_with, density_curves,
                     finished, gain_points, layer_density_lines, methods_table, over_seeds, size_points,
                     trial_summary, with_size)
from .evaluation_views import cka_cells, fig_cka, fig_robustness, probe_numbers, table_probe
from .items import Plot, ReportInputs, ReportItem, ReportView, Skip, Table, load_optional, need_columns, plot
from .render import render_html, render_md, write_report
from .views import (fig_accuracy_density, fig_capacity, fig_data_efficiency, fig_gain, fig_layers, table_compare,
                    table_long_tail, table_many_class, table_methods, table_power, table_protocols, views)

__all__ = [
    "Plot", "ReportInputs", "ReportItem", "ReportView", "Skip", "Table", "accuracy_vs_density", "best_augmentation",
    "capacity_bars", "cka_cells", "datasets_with", "density_curves", "fig_accuracy_density", "fig_capacity",
    "fig_cka", "fig_data_efficiency", "fig_gain", "fig_layers", "fig_robustness", "finished", "gain_points",
    "layer_density_lines", "load_optional", "methods_table", "need_columns", "over_seeds", "plot", "probe_numbers",
    "render_html", "render_md", "size_points", "table_compare", "table_long_tail", "table_many_class",
    "table_methods", "table_power", "table_probe", "table_protocols", "trial_summary", "views", "with_size",
    "write_report",
]
