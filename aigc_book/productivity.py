"""Published experiments on generative AI and work, a forest plot of them, and an Amdahl model of a job.

Introduced in chapter 6, section "What the experiments say about productivity" (the studies and the
forest plot); the job model is introduced in chapter 6, section "An Amdahl model of a job".

The studies (``aigc_book/data/productivity.csv``) differ in design (randomised trials, a staggered
roll-out, a survey linked to administrative records), in task and in worker, so their effects are
not one number measured many times. Every row names its source.

A job model. If a share ``s`` of a worker's hours goes to tasks that AI makes ``k`` times faster
(``k`` = time without AI / time with AI), the whole job's time falls from 1 to ``(1 - s) + s/k``:

    fraction of hours saved  = s · (1 - 1/k),
    speed-up of the whole job = 1 / ((1 - s) + s/k),

Amdahl's law (Amdahl 1967, "Validity of the single processor approach to achieving large scale
computing capabilities", AFIPS Conference Proceedings 30). A task-level gain therefore becomes a
job-level gain only in proportion to the share of hours it touches: Peng et al.'s 55.8% time saving
(``k ≈ 2.26``) on 5% of the hours gives the 2.8% of work hours that Humlum & Vestergaard measured
(:func:`share_needed`).

Exposure is not a gain. Eloundou et al. (:data:`ELOUNDOU_EXPOSURE`) estimate which tasks an LLM
*could* do at least 50% faster at equal quality; those figures bound what is possible, they do not
measure what happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from aigc_book.checks import is_number
from aigc_book.facts import read_table

__all__ = [
    "DESIGN_MARKERS",
    "ELOUNDOU_EXPOSURE",
    "MEASURED_TIME_SAVED",
    "PENG_TIME_SAVED",
    "PRODUCTIVITY_CSV_COLUMNS",
    "Study",
    "average_time_saved",
    "design_kind",
    "forest_plot",
    "job_time_saved",
    "load_studies",
    "overall_speedup",
    "plot_time_saved",
    "productivity_calculator_widget",
    "share_needed",
    "speedup_from_time_saved",
    "worker_effect",
]

PRODUCTIVITY_CSV_COLUMNS = (
    "study",
    "year",
    "setting",
    "n",
    "design",
    "outcome",
    "effect_pct",
    "ci_low_pct",
    "ci_high_pct",
    "note",
    "source",
    "confidence",
)

# Humlum & Vestergaard 2025, "Large Language Models, Small Labor Market Effects", BFI WP 2025-56:
# time savings averaged 2.8% of work hours (about 25,000 Danish workers in 11 exposed occupations).
MEASURED_TIME_SAVED = 0.028

# Peng, Kalliamvakou, Cihon & Demirer 2023, arXiv:2302.06590: with Copilot, 71.17 instead of 160.89
# minutes for one task, i.e. 55.8% less time (95% CI 21% to 89%).
PENG_TIME_SAVED = 0.558

# Eloundou, Manning, Mishkin & Rock, "GPTs are GPTs", arXiv:2303.10130 (Science 2024). A task is
# "exposed" if an LLM could cut its time by at least 50% at equal quality (rated by humans and GPT-4).
# These are exposure estimates, a ceiling on potential, not measured productivity gains.
ELOUNDOU_EXPOSURE: dict[str, float | tuple[float, float]] = {
    "workers_with_at_least_10pct_of_tasks_exposed": 0.80,
    "workers_with_at_least_50pct_of_tasks_exposed": 0.19,
    "tasks_faster_with_an_llm_alone": 0.15,
    "tasks_faster_with_software_built_on_llms": (0.47, 0.56),
}


# --------------------------------------------------------------------------------------------------
# The studies
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """One (study, outcome) row of ``productivity.csv``.

    ``effect_pct`` is the effect as the source reports it, in percent (percentage points where the
    outcome says so): for ``"time taken"`` a negative value means faster (METR's +19 means slower).
    ``ci_low_pct``/``ci_high_pct`` are a 95% confidence interval where the source gives one, else
    None; ``note`` and ``setting`` are None when empty.
    """

    study: str
    year: int
    setting: str | None
    n: int
    design: str
    outcome: str
    effect_pct: float
    ci_low_pct: float | None
    ci_high_pct: float | None
    note: str | None
    source: str
    confidence: str


def _cell_number(raw: dict[str, str], column: str, line: int, *, integer: bool = False, required: bool = True):
    text = raw[column].strip()
    if not text:
        if required:
            raise ValueError(f"productivity.csv line {line}: column {column!r} must not be empty")
        return None
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"productivity.csv line {line}: column {column!r} is not {kind}: {text!r}") from None


def load_studies(path: str | Path | None = None) -> list[Study]:
    """Load the productivity studies, one :class:`Study` per (study, outcome), in file order.

    ``path`` defaults to the copy shipped inside the package. Empty cells load as None; a missing
    required cell, a number that does not parse, or a confidence other than ``V``/``M`` raises
    ``ValueError`` naming the line and column.
    """
    studies = []
    for line, raw in read_table("productivity.csv", PRODUCTIVITY_CSV_COLUMNS, path):
        for column in ("study", "design", "outcome", "source"):
            if not raw[column].strip():
                raise ValueError(f"productivity.csv line {line}: column {column!r} must not be empty")
        confidence = raw["confidence"].strip()
        if confidence not in ("V", "M"):
            raise ValueError(f"productivity.csv line {line}: confidence must be 'V' or 'M', got {confidence!r}")
        studies.append(
            Study(
                study=raw["study"].strip(),
                year=_cell_number(raw, "year", line, integer=True),
                setting=raw["setting"].strip() or None,
                n=_cell_number(raw, "n", line, integer=True),
                design=raw["design"].strip(),
                outcome=raw["outcome"].strip(),
                effect_pct=_cell_number(raw, "effect_pct", line),
                ci_low_pct=_cell_number(raw, "ci_low_pct", line, required=False),
                ci_high_pct=_cell_number(raw, "ci_high_pct", line, required=False),
                note=raw["note"].strip() or None,
                source=raw["source"].strip(),
                confidence=confidence,
            )
        )
    return studies


def design_kind(design: str) -> str:
    """``"RCT"``, ``"staggered roll-out"`` or ``"survey"`` for a ``design`` cell of the CSV.

    Checked in this order because "staggered rollout (not an RCT)" contains the letters RCT.
    """
    text = design.lower()
    if "rollout" in text or "roll-out" in text:
        return "staggered roll-out"
    if "survey" in text:
        return "survey"
    if "rct" in text:
        return "RCT"
    raise ValueError(f"unknown study design {design!r}: expected an RCT, a staggered roll-out or a survey")


def worker_effect(study: Study) -> tuple[float, float | None, float | None]:
    """The effect (and CI) with one sign convention: positive is better for the worker.

    Every outcome in the table already reads that way (more output, higher quality, time *saved*)
    except ``"time taken"``, whose sign is flipped so that it reads as percent of time saved:
    Noy & Zhang's -40% time becomes +40, METR's +19% time (slower) becomes -19, and its CI
    [+2, +39] becomes [-39, -2].
    """
    lo, hi = study.ci_low_pct, study.ci_high_pct
    if study.outcome == "time taken":
        return -study.effect_pct, (None if hi is None else -hi), (None if lo is None else -lo)
    return study.effect_pct, lo, hi


DESIGN_MARKERS = {"RCT": "o", "staggered roll-out": "s", "survey": "D"}
_DESIGN_COLORS = {"RCT": "#1f77b4", "staggered roll-out": "#ff7f0e", "survey": "#2ca02c"}


def _row_label(study: Study) -> str:
    outcome = study.outcome
    if outcome == "time taken":
        outcome = f"time saved (reported: time taken {study.effect_pct:+g}%)"
    return f"{study.study} {study.year} (N={study.n:,}): {outcome}"


def forest_plot(ax, studies: list[Study] | None = None):
    """Draw one row per (study, outcome): the effect as a marker, its 95% CI as a whisker if given.

    Effects use :func:`worker_effect`'s convention (positive = better for the worker; time taken
    flipped into time saved), as the x-axis label says. Marker shape and colour give the design
    (circle RCT, square staggered roll-out, diamond survey); a vertical line marks zero. Rows run
    top to bottom in the order given (default: :func:`load_studies`). Returns ``ax``.
    """
    from matplotlib.lines import Line2D

    studies = load_studies() if studies is None else studies
    if not studies:
        raise ValueError("forest_plot needs at least one study")
    ys = list(range(len(studies)))
    whiskers = []
    for y, study in zip(ys, studies):
        kind = design_kind(study.design)
        value, lo, hi = worker_effect(study)
        if lo is not None and hi is not None:
            whiskers.append((y, lo, hi, _DESIGN_COLORS[kind]))
        ax.plot([value], [y], marker=DESIGN_MARKERS[kind], color=_DESIGN_COLORS[kind], linestyle="none", markersize=7)
    if whiskers:
        w_y, w_lo, w_hi, w_c = zip(*whiskers)
        ax.hlines(w_y, w_lo, w_hi, colors=list(w_c), linewidth=1.5)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([_row_label(s) for s in studies])
    ax.set_ylim(len(studies) - 0.5, -0.5)  # first row at the top
    ax.set_xlabel(
        "effect, % (pp where marked; positive = better for the worker: more output, higher quality or time saved;\n"
        "time taken is shown as time saved, so METR's +19% time (slower) reads -19; lines: 95% CI)"
    )
    handles = [
        Line2D([], [], marker=m, color=_DESIGN_COLORS[k], linestyle="none", label=k) for k, m in DESIGN_MARKERS.items()
    ]
    ax.legend(handles=handles, title="design", loc="lower right")
    return ax


# --------------------------------------------------------------------------------------------------
# An Amdahl model of a job
# --------------------------------------------------------------------------------------------------


def _number(name: str, value: float) -> float:
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got nan")
    return float(value)


def _share(name: str, value: float) -> float:
    value = _number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a fraction and must be in [0, 1], got {value}")
    return value


def _speedup(task_speedup: float) -> float:
    k = _number("task_speedup", task_speedup)
    if k <= 0:
        raise ValueError(f"task_speedup is time without AI / time with AI and must be positive, got {k}")
    return k  # k < 1 is a slow-down (METR); k = inf means the task takes no time at all


def speedup_from_time_saved(time_saved: float) -> float:
    """Task speed-up ``k = 1 / (1 - time_saved)`` from the fraction of a task's time saved.

    Peng et al.'s 55.8% less time gives ``k ≈ 2.26``; METR's 19% *more* time is ``time_saved = -0.19``
    and gives ``k ≈ 0.84``, a slow-down.
    """
    f = _number("time_saved", time_saved)
    if not f < 1:
        raise ValueError(f"time_saved must be below 1 (saving all the time would be an infinite speed-up), got {f}")
    return 1.0 / (1.0 - f)


def job_time_saved(share_assisted: float, task_speedup: float) -> float:
    """Fraction of a job's total time saved: ``s · (1 - 1/k)``.

    ``share_assisted`` (``s``) is the share of working hours spent on the tasks AI helps with, and
    ``task_speedup`` (``k``) the ratio time-without-AI / time-with-AI on those tasks. Negative when
    ``k < 1`` (the assisted tasks got slower). Amdahl 1967 (see the module docstring).
    """
    s, k = _share("share_assisted", share_assisted), _speedup(task_speedup)
    return s * (1.0 - 1.0 / k)


def overall_speedup(share_assisted: float, task_speedup: float) -> float:
    """Amdahl's law (Amdahl 1967): the whole job's speed-up ``1 / ((1 - s) + s/k)``.

    Equal to ``1 / (1 - job_time_saved(s, k))``; it can never exceed ``1 / (1 - s)``, however large
    ``k`` is.
    """
    s, k = _share("share_assisted", share_assisted), _speedup(task_speedup)
    return 1.0 / ((1.0 - s) + s / k)


def share_needed(time_saved: float, task_speedup: float) -> float:
    """The share of hours that a task speed-up ``k`` must cover to save ``time_saved`` of all hours.

    Inverts :func:`job_time_saved`: ``s = time_saved / (1 - 1/k)``. For Humlum & Vestergaard's 2.8%
    with Peng et al.'s ``k ≈ 2.26`` (55.8% less time) this is about 5% of working hours. Raises
    ``ValueError`` when no share in [0, 1] does it (``k = 1``, or a target larger than ``1 - 1/k``,
    or a saving of the wrong sign).
    """
    target, k = _number("time_saved", time_saved), _speedup(task_speedup)
    per_unit_share = 1.0 - 1.0 / k
    if per_unit_share == 0:
        raise ValueError("task_speedup = 1 saves no time, so no share of hours reaches a time saving")
    share = target / per_unit_share
    if not 0.0 <= share <= 1.0:
        raise ValueError(
            f"no share of hours in [0, 1] saves {target:.3g} of the time with task_speedup {k:.3g} "
            f"(the most it can save is {per_unit_share:.3g})"
        )
    return share


def average_time_saved(share_assisted: float, task_speedup: float, adoption: float) -> float:
    """Time saved averaged over all workers when only a fraction ``adoption`` of them use AI.

    ``adoption · s · (1 - 1/k)``: non-users save nothing.
    """
    return _share("adoption", adoption) * job_time_saved(share_assisted, task_speedup)


def _speedup_label(k: float) -> str:
    if math.isinf(k):
        return "k = inf (the task takes no time)"
    if math.isclose(k, speedup_from_time_saved(PENG_TIME_SAVED)):
        return f"k = {k:.2f} (Peng et al. 2023: 55.8% less time)"
    return f"k = {k:g}"


def plot_time_saved(ax, speedups=None, *, max_share: float = 0.5, measured: float = MEASURED_TIME_SAVED):
    """Plot the fraction of hours saved against the share of hours assisted, one line per speed-up.

    ``speedups`` defaults to ``(1.25, 2, 2.26, inf)``: 2.26 is Peng et al.'s 55.8% less time and
    ``inf`` the limit of a task that takes no time. A horizontal line marks the measured 2.8% of
    hours (Humlum & Vestergaard 2025), and a dot the share at which Peng's speed-up reaches it
    (:func:`share_needed`, about 5%). Returns ``ax``.
    """
    peng = speedup_from_time_saved(PENG_TIME_SAVED)
    speedups = (1.25, 2.0, peng, math.inf) if speedups is None else speedups
    max_share = _share("max_share", max_share)
    shares = [max_share * i / 200 for i in range(201)]
    for k in speedups:
        saved = [100 * job_time_saved(s, k) for s in shares]
        ax.plot([100 * s for s in shares], saved, label=_speedup_label(k))
    ax.axhline(100 * measured, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"measured: {100 * measured:.1f}% of hours (Humlum & Vestergaard 2025)",
        (100 * max_share, 100 * measured),
        xytext=(0, 4),
        textcoords="offset points",
        ha="right",
        va="bottom",
    )
    s_star = share_needed(measured, peng)
    ax.plot([100 * s_star], [100 * measured], marker="o", color="black")
    ax.set_xlabel("share of working hours on AI-assisted tasks, s (%)")
    ax.set_ylabel("share of all working hours saved, s(1 - 1/k) (%)")
    ax.set_title("A large speed-up on a small share of hours saves little")
    ax.legend(title="speed-up on the assisted tasks", loc="upper left")
    return ax


def _calculator_text(share: float, speedup: float, adoption: float) -> str:
    saved = job_time_saved(share, speedup)
    average = average_time_saved(share, speedup, adoption)
    job = overall_speedup(share, speedup)
    return (
        f"A user saves {saved:.1%} of working hours (the whole job runs {job:.2f}x as fast). "
        f"With {adoption:.0%} of workers using it, hours saved per worker average {average:.1%}; "
        f"Humlum & Vestergaard (2025) measured {MEASURED_TIME_SAVED:.1%}."
    )


def productivity_calculator_widget():
    """An ipywidgets box with sliders for the share of work assisted, the speed-up on that share and
    the adoption rate; the text below re-renders the hours saved (:func:`job_time_saved`, Amdahl 1967).

    The defaults are the workers' own estimate in Humlum & Vestergaard's companion paper (PNAS
    2025): ChatGPT halves the time (``k = 2``) of about a third of their tasks. Returns the box
    without displaying it.
    """
    import ipywidgets as widgets  # imported here: the rest of the module needs no widget library

    style = {"description_width": "190px"}
    layout = widgets.Layout(width="520px")
    share = widgets.FloatSlider(
        value=1 / 3, min=0.0, max=1.0, step=0.01, description="share of hours assisted", style=style, layout=layout
    )
    speedup = widgets.FloatSlider(
        value=2.0, min=0.5, max=10.0, step=0.05, description="speed-up on that share (k)", style=style, layout=layout
    )
    adoption = widgets.FloatSlider(
        value=1.0, min=0.0, max=1.0, step=0.01, description="adoption (share of workers)", style=style, layout=layout
    )
    result = widgets.HTML()

    def render(_change=None) -> None:
        result.value = f"<p>{_calculator_text(share.value, speedup.value, adoption.value)}</p>"

    for w in (share, speedup, adoption):
        w.observe(render, names="value")
    render()
    return widgets.VBox([share, speedup, adoption, result])
