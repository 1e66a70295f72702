"""The report's figures: tidy frames in, PNG bytes out.

Each function draws a frame that derive.py (or an evaluation's view) has
already reduced to one row per point (accuracies and densities in percent, a
`panel` column naming the subplot, a `series` column naming the line or bar).
The selections (dense, winning ticket, aug*) live in derive.py, so what is
drawn is what the tables say. A panel or a series appears in the order of its
first row (derive.py puts panels in order of dataset, network and data size,
by number); every legend sits below its panel, outside the data.
"""
from __future__ import annotations

import io
import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # reports are rendered on headless machines: never ask for a display
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402


def _order(values) -> list:
    return list(dict.fromkeys(values))


def _colors(names) -> dict:
    """One color per series name across all panels, so a legend reads the same everywhere."""
    return {n: f"C{i % 10}" for i, n in enumerate(_order(names))}


def _grid(n: int, width: float = 4.6, height: float = 3.6, ncols: int = 3):
    ncols = min(n, ncols)
    # Constrained layout makes room for what sits outside an axes (its legend below it).
    fig, axes = plt.subplots(math.ceil(n / ncols), ncols, figsize=(width * ncols, height * math.ceil(n / ncols)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _png(fig, title: str) -> bytes:
    buf = io.BytesIO()
    try:
        # A one-panel figure is narrow: wrap a long title instead of cutting it.
        fig.suptitle(textwrap.fill(title, max(30, int(fig.get_figwidth() * 8))))
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return buf.getvalue()


def _legend(ax, handles=None) -> None:
    """The panel's legend below its axes, outside the data: "best" inside the
    axes still covers points where the lines fill the panel."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncols=min(3, max(1, len(handles))), frameon=False)


def _log_ticks(ax, values, label) -> None:
    """A log axis labelled at the data's own values: a few points inside one
    decade would otherwise get no labelled tick at all. One tick per label."""
    ticks = list({label(v): v for v in sorted(set(values))}.items())
    shown = ticks[::max(1, len(ticks) // 7)]
    ax.set_xticks([v for _, v in shown], [lab for lab, _ in shown])
    ax.minorticks_off()


def accuracy_vs_density(curves: pd.DataFrame, title: str) -> bytes:
    """curves: panel, series, density, mean, std, star (one row per round)."""
    color = _colors(curves["series"])
    panels = _order(curves["panel"])
    fig, axes = _grid(len(panels))
    star = Line2D([], [], marker="*", ls="none", ms=12, color="0.6", mec="black", label="winning ticket")
    for ax, panel in zip(axes, panels):
        p = curves[curves["panel"] == panel]
        for series in _order(p["series"]):
            s = p[p["series"] == series].sort_values("density", ascending=False)
            c = color[series]
            ax.plot(s["density"], s["mean"], marker="o", ms=3, color=c, label=series)
            ax.fill_between(s["density"], s["mean"] - s["std"], s["mean"] + s["std"], color=c, alpha=0.2, lw=0)
            best = s[s["star"]]
            ax.plot(best["density"], best["mean"], marker="*", ms=14, ls="none", color=c, mec="black")
        ax.set_xscale("log")
        ax.invert_xaxis()  # dense on the left, as pruning proceeds to the right
        _log_ticks(ax, p["density"], lambda d: f"{d:.3g}")
        ax.set(title=panel, xlabel="density (% of prunable weights left, log)", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        _legend(ax, ax.get_legend_handles_labels()[0] + [star])
    return _png(fig, title)


def _size_axis(ax, p: pd.DataFrame, panel: str, ylabel: str) -> None:
    """A log data-size axis labelled at the points' own sizes."""
    ax.set_xscale("log")
    _log_ticks(ax, p["x"], dict(zip(p["x"], p["xtick"])).get)
    ax.set(title=panel, xlabel=p["xlabel"].iloc[0], ylabel=ylabel)
    ax.grid(alpha=0.3)
    _legend(ax)


def against_size(points: pd.DataFrame, title: str, ylabel: str) -> bytes:
    """points: panel, xlabel, series, x, xtick, mean, std, note (the augmentation
    aug* chose, written beside its point; empty elsewhere)."""
    color = _colors(points["series"])
    panels = _order(points["panel"])
    fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels):
        p = points[points["panel"] == panel]
        for series in _order(p["series"]):
            s = p[p["series"] == series].sort_values("x")
            ax.errorbar(s["x"], s["mean"], yerr=s["std"].fillna(0), capsize=3, color=color[series],
                        marker="s" if "aug*" in series else "o", ms=4,
                        ls="-" if "ticket" in series else "--", label=series)
            for row in s.itertuples():
                if row.note:
                    ax.annotate(row.note, (row.x, row.mean), xytext=(4, 4), textcoords="offset points",
                                fontsize=7, color=color[series])
        _size_axis(ax, p, panel, ylabel)
    return _png(fig, title)


def gains_against_size(points: pd.DataFrame, title: str, ylabel: str) -> bytes:
    """points: panel, xlabel, series, x, xtick, gain, lo, hi (the interval; NaN:
    none, e.g. one seed), n (seeds). A dashed line marks zero: no gain."""
    color = _colors(points["series"])
    panels = _order(points["panel"])
    fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels):
        p = points[points["panel"] == panel]
        series = _order(p["series"])
        # Series share x positions: nudge them apart (in log space) so bars stay readable.
        step = 0.03 * (len(series) > 1)
        for i, name in enumerate(series):
            s = p[p["series"] == name].sort_values("x")
            x = s["x"] * 10 ** (step * (i - (len(series) - 1) / 2))
            err = np.vstack([(s["gain"] - s["lo"]).to_numpy(dtype=float), (s["hi"] - s["gain"]).to_numpy(dtype=float)])
            ax.errorbar(x, s["gain"], yerr=np.nan_to_num(err), capsize=3, color=color[name], marker="o", ms=4,
                        label=f"{name} (n={int(s['n'].min())}{'' if s['n'].nunique() == 1 else '+'})")
        ax.axhline(0.0, color="0.3", lw=1, ls="--")
        _size_axis(ax, p, panel, ylabel)
    return _png(fig, title)


def grouped_bars(bars: pd.DataFrame, title: str) -> bytes:
    """bars: panel, group (the x position), series (one bar per group), mean, std."""
    color = _colors(bars["series"])
    panels = _order(bars["panel"])
    fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels):
        p = bars[bars["panel"] == panel]
        groups, series = _order(p["group"]), _order(p["series"])
        width = 0.8 / len(series)
        for i, name in enumerate(series):
            s = p[p["series"] == name].set_index("group").reindex(groups)  # a missing bar stays NaN: not drawn
            ax.bar(np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width, s["mean"], width,
                   yerr=s["std"].fillna(0), capsize=2, color=color[name], label=name)
        ax.set_xticks(range(len(groups)), groups)
        ax.set(title=panel, xlabel="augmentation", ylabel="test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        _legend(ax)
    return _png(fig, title)


def layer_lines(lines: pd.DataFrame, title: str) -> bytes:
    """lines: panel, series, position (of the layer in the model), layer, density."""
    color = _colors(lines["series"])
    panels = _order(lines["panel"])
    layers = lines["position"].max() + 1
    fig, axes = _grid(len(panels), width=max(6.0, 0.32 * layers), height=4.2, ncols=2)
    for ax, panel in zip(axes, panels):
        p = lines[lines["panel"] == panel]
        for series in _order(p["series"]):
            s = p[p["series"] == series].sort_values("position")
            ax.plot(s["position"], s["density"], marker="o", ms=3, color=color[series], label=series)
        names = p.drop_duplicates("position").sort_values("position")
        ax.set_xticks(names["position"], names["layer"], rotation=90, fontsize=7)
        ax.set(title=panel, xlabel="layer (model order)", ylabel="density (% of the layer's weights left)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _legend(ax)
    return _png(fig, title)


def heatmaps(cells: pd.DataFrame, title: str) -> bytes:
    """cells: panel, row (a pair of networks), layer, value (CKA in [0, 1])."""
    panels = _order(cells["panel"])
    rows = max(cells[cells["panel"] == p]["row"].nunique() for p in panels)
    layers = cells["layer"].nunique()
    fig, axes = _grid(len(panels), width=max(7.0, 2.5 + 0.32 * layers), height=2.2 + 0.3 * rows, ncols=1)
    for ax, panel in zip(axes, panels):
        p = cells[cells["panel"] == panel]
        grid = p.pivot_table(index="row", columns="layer", values="value", aggfunc="mean")
        grid = grid.reindex(index=_order(p["row"]), columns=_order(p["layer"]))
        im = ax.imshow(np.ma.masked_invalid(grid.to_numpy(dtype=float)), vmin=0, vmax=1,
                       cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(grid.index)), grid.index, fontsize=7)
        ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=90, fontsize=7)
        ax.set(title=panel, xlabel="layer (model order)")
        fig.colorbar(im, ax=ax, label="linear CKA")
    return _png(fig, title)
