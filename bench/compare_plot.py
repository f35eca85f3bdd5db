"""``--compare --plot FILE.png``: throughput over time, one panel per combination.

Needs matplotlib (the ``bench`` extra), imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .compare_result import BIN, RunResult

__all__ = ["PLOT_BIN", "plot_results"]

#: Width of the bins the plot draws, seconds.
PLOT_BIN = 0.5
#: Stage colours (paused stages are also hatched).
COLOURS = {
    "pre-copy": "#c6dbef",
    "detach": "#fdae6b",
    "stop-and-copy": "#e6550d",
    "restore": "#a63603",
    "attach": "#74c476",
    "sm-update": "#9e9ac8",
}
#: The standby device's intervals: a hatched band along the bottom of the panel.
STANDBY = "#17becf"


def plot_results(results: Sequence[RunResult], path: str) -> None:
    """Draw delivered messages per second over time, one panel per combination.

    Rates are drawn in :data:`PLOT_BIN` bins. Every migration stage is shaded
    (paused stages hatched); dashed lines mark the VF's release (red) and the
    new VF's arrival (green); a cyan cross-hatched band along the bottom marks
    when a standby device was there (:attr:`Timeline.standby`). Two columns,
    or four when both devices ran (the port model × device, so each row is
    one mode × strategy). The y axis is clipped at 2.5× the median rate (the
    backlog's burst at the resume goes off the top).

    Raises:
        RuntimeError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(
            "--plot needs matplotlib: pip install 'rdsx[bench]' (or .venv/bin/pip install "
            "matplotlib)"
        ) from None
    ncols = 4 if len({r.standby for r in results}) > 1 and len(results) >= 8 else 2
    rows = max(1, math.ceil(len(results) / ncols))
    fig, axes = plt.subplots(
        rows, ncols, figsize=(5.5 * ncols, 2.0 * rows), sharex=True, squeeze=False
    )
    for ax, r in zip(axes.flat, results, strict=False):
        t0 = r.traffic[0] if r.traffic else 0.0
        # Coarser bins than the JSON's: paced ticks beat against 50 ms bins.
        k = max(1, round(PLOT_BIN / BIN))
        ys = [sum(r.series[i : i + k]) / k for i in range(0, len(r.series), k)]
        xs = [i * k * BIN for i in range(len(ys))]
        ax.step(xs, ys, where="post", lw=0.8, color="black")
        for tl in r.timelines:
            for stage in tl.stages:
                ax.axvspan(
                    stage.start - t0,
                    stage.end - t0,
                    color=COLOURS.get(stage.name, "grey"),
                    alpha=0.5,
                    hatch="//" if stage.paused else None,
                    lw=0,
                )
            for start, end in tl.standby:
                ax.axvspan(
                    start - t0,
                    end - t0,
                    ymin=0,
                    ymax=0.15,
                    facecolor=STANDBY,
                    edgecolor="#0b6f7a",
                    alpha=0.7,
                    hatch="xx",
                    lw=0.5,
                )
            gap = tl.device_gap
            if gap is not None:
                ax.axvline(gap[0] - t0, color="red", lw=0.6, ls="--")
                ax.axvline(gap[1] - t0, color="green", lw=0.6, ls="--")
        steady = sorted(v for v in ys if v > 0)
        if steady:
            # The backlog's burst at the resume would flatten everything else: clip it.
            ax.set_ylim(0, 2.5 * steady[len(steady) // 2])
        ax.set_title(r.label.replace("/", " / "), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("msgs/s", fontsize=7)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("s since the traffic started", fontsize=7)
    handles = [matplotlib.patches.Patch(color=c, alpha=0.5, label=n) for n, c in COLOURS.items()]
    handles.append(
        matplotlib.patches.Patch(
            facecolor=STANDBY, edgecolor="#0b6f7a", hatch="xx", alpha=0.7, label="standby device"
        )
    )
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04 if rows > 2 else 0.1, 1, 1))
    fig.savefig(path, dpi=70)
    plt.close(fig)
