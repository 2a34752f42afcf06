"""Summaries of TensorBoard event files for the terminal (what ``tapekit inspect`` prints).

A *run* is a directory that directly holds ``events.out.tfevents.*`` files, as TensorBoard counts
them. For each run the event files are read with TensorBoard's own ``EventAccumulator``; every
scalar (TF2 ``tf.summary.scalar`` data is stored as tensors) is summarised by its step range, last
and, for training curves (a loss or a metric, by tag), the best value: the Trainer's grouped tags
(``step/loss``, ``epoch/loss``, ``epoch/acc``) as well as bare ones (``loss``, ``epoch_loss``,
``val_acc``: users' own logs, older runs). A function plotted over x (``tanh/f``,
``cut_at_y0/df_dx``) has no "best", nor has anything under ``optimizer/`` (learning rate,
steps/s, loss scale), ``curvature/``, ``update_ratio/`` or ``gradient_noise/``. Scalars tagged
``gradient_norm/<variable>`` (what tapekit's loggers and the Trainer write) also get a trend and
warnings when they vanish (≈ 0), explode or stop being finite. An event file that cannot be read
to its end (corrupt, truncated, not an event file) gets a warning naming it and the record where
reading stopped: TensorBoard itself silently shows only what comes before.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RunSummary", "ScalarSeries", "find_runs", "format_report", "summarize"]

_EVENT_GLOB = "events.out.tfevents.*"
_GRAD_PREFIX = "gradient_norm/"
# Groups of diagnostics, never training curves (``optimizer/loss_scale`` names no loss).
_NOT_CURVES = (_GRAD_PREFIX, "optimizer/", "curvature/", "update_ratio/", "gradient_noise/")
# A training curve names a loss or a metric in a component of its tag (``loss``, ``val_acc``,
# ``epoch/loss``, ``step/acc``, ``max_error_vs_exact``); only those have a best value.
_METRIC = (
    r"loss|acc|accuracy|auc|precision|recall|f1|error|err|mae|mse|rmse|score|reward|iou|r2"
    r"|perplexity|ppl|distance|nll|likelihood"
)
_TRAINING_CURVE = re.compile(rf"(^|[/_])({_METRIC})($|[/_])", re.I)
_HIGHER_IS_BETTER = re.compile(
    r"(^|[/_])(acc|accuracy|auc|precision|recall|f1|score|reward|iou|r2|likelihood)($|[/_])", re.I
)


@dataclass
class ScalarSeries:
    """One scalar tag of one run: its steps and values in step order (latest write per step)."""

    tag: str
    steps: list[int]
    values: list[float]

    @property
    def last(self) -> float:
        """The value at the highest step."""
        return self.values[-1]

    @property
    def direction(self) -> str | None:
        """``"max"`` or ``"min"``: which value is best for a training curve (a tag naming a loss
        or a metric, e.g. ``epoch/loss``, ``step/acc``, ``val_acc``); ``None`` for anything
        else (``optimizer/...`` such as the learning rate, gradient norms, a function plotted
        over x)."""
        if self.tag.startswith(_NOT_CURVES) or not _TRAINING_CURVE.search(self.tag):
            return None
        return "max" if _HIGHER_IS_BETTER.search(self.tag) else "min"

    def best(self) -> tuple[float, int] | None:
        """The best finite value and its step, or ``None`` when best is not meaningful."""
        finite = [(v, s) for v, s in zip(self.values, self.steps) if math.isfinite(v)]
        if self.direction is None or not finite:
            return None
        pick = max if self.direction == "max" else min
        return pick(finite, key=lambda vs: vs[0])

    def first_nonfinite(self) -> int | None:
        """The first step whose value is NaN or infinite, or ``None``."""
        return next((s for v, s in zip(self.values, self.steps) if not math.isfinite(v)), None)


@dataclass
class RunSummary:
    """What one run directory holds."""

    name: str
    path: Path
    event_files: int
    scalars: dict[str, ScalarSeries] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    has_graph: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def gradient_norms(self) -> dict[str, ScalarSeries]:
        """The ``gradient_norm/<variable>`` series keyed by variable (``global`` included)."""
        n = len(_GRAD_PREFIX)
        return {t[n:]: s for t, s in self.scalars.items() if t.startswith(_GRAD_PREFIX)}

    @property
    def step_range(self) -> tuple[int, int] | None:
        """The lowest and highest step of any scalar, or ``None`` without scalars."""
        steps = [s for series in self.scalars.values() for s in series.steps]
        return (min(steps), max(steps)) if steps else None


def find_runs(logdir: str | os.PathLike) -> list[Path]:
    """List the directories under ``logdir`` (itself included) that directly hold event files.

    Args:
        logdir: A directory, e.g. ``logs`` or ``logs/01_gradients``.

    Returns:
        The run directories, sorted by path; empty when there are no event files.

    Raises:
        FileNotFoundError: If ``logdir`` does not exist.
        NotADirectoryError: If ``logdir`` is a file.

    Example:
        >>> import tempfile
        >>> find_runs(tempfile.mkdtemp())
        []
    """
    root = Path(logdir)
    if not root.exists():
        raise FileNotFoundError(f"The log directory {str(root)!r} does not exist.")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is a file; pass the directory that holds logs.")
    runs = {p.parent for p in root.rglob(_EVENT_GLOB) if p.is_file()}
    return sorted(runs)


def _load(path: Path, root: Path) -> RunSummary:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(
        str(path), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0}, purge_orphaned_data=False
    )
    acc.Reload()
    tags = acc.Tags()
    name = path.relative_to(root).as_posix() if path != root else "."
    run = RunSummary(name, path, len(list(path.glob(_EVENT_GLOB))), has_graph=bool(tags["graph"]))
    latest: dict[str, dict[int, tuple[float, float]]] = {}

    def add(tag: str, wall_time: float, step: int, value: float) -> None:
        seen = latest.setdefault(tag, {})
        if step not in seen or wall_time >= seen[step][0]:  # a rerun's value wins
            seen[step] = (wall_time, value)

    for tag in tags["tensors"]:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name or "tensors"
        events = acc.Tensors(tag)
        if plugin != "scalars":
            run.other[plugin] = run.other.get(plugin, 0) + 1
            continue
        for e in events:
            add(tag, e.wall_time, e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
    for tag in tags["scalars"]:  # TF1-style scalar summaries
        for e in acc.Scalars(tag):
            add(tag, e.wall_time, e.step, float(e.value))
    for kind in ("histograms", "images", "audio"):
        if tags[kind]:
            run.other[kind] = run.other.get(kind, 0) + len(tags[kind])
    for tag in sorted(latest):
        steps = sorted(latest[tag])
        run.scalars[tag] = ScalarSeries(tag, steps, [latest[tag][s][1] for s in steps])
    return run


_READ_ERROR = re.compile(r"(corrupted|truncated) record at \d+")


def _unreadable(path: Path, root: Path) -> str | None:
    """Why ``path`` cannot be read to its end, or ``None``: every record's length and checksum
    (TFRecord framing, checked by TensorFlow's reader) and every Event proto."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    records = 0
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            event_pb2.Event.FromString(record.numpy())
            records += 1
    except (tf.errors.DataLossError, DecodeError) as exc:
        text = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
        found = _READ_ERROR.search(text)
        reason = found[0] if found else text.strip().splitlines()[0]
        name = path.relative_to(root).as_posix() if path != root else path.name
        return (
            f"event file {name} could not be read after {records} record(s) ({reason}); "
            f"later values are missing here and in TensorBoard. The file is corrupt, truncated "
            f"or not an event file: delete it, or rerun the script that wrote it"
        )
    return None


def _trend(series: ScalarSeries) -> tuple[float, float]:
    """Mean of the first and of the last tenth of a series (at least one point each)."""
    k = max(1, len(series.values) // 10)
    head = [v for v in series.values[:k] if math.isfinite(v)]
    tail = [v for v in series.values[-k:] if math.isfinite(v)]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return mean(head), mean(tail)


def _warn(run: RunSummary, vanishing: float, exploding: float) -> None:
    for tag, series in run.scalars.items():
        bad = series.first_nonfinite()
        if bad is not None:
            what = "gradient norm" if tag.startswith(_GRAD_PREFIX) else "value"
            run.warnings.append(f"{tag}: non-finite {what} (NaN/inf) from step {bad} on")
    for var, series in run.gradient_norms.items():
        if series.first_nonfinite() is not None:
            continue
        first, last = _trend(series)
        if abs(last) <= vanishing:
            run.warnings.append(
                f"gradient_norm/{var}: vanishing, the last values average {last:.3g} (<= "
                f"{vanishing:g}); this variable has (almost) stopped learning"
            )
        elif first > 0 and last / first >= exploding:
            run.warnings.append(
                f"gradient_norm/{var}: exploding, grew {last / first:.3g}x from {first:.3g} to "
                f"{last:.3g}; lower the learning rate or clip gradients"
            )


def summarize(
    logdir: str | os.PathLike, *, vanishing: float = 1e-7, exploding: float = 1e3
) -> list[RunSummary]:
    """Read every run under ``logdir`` and summarise it.

    Args:
        logdir: A directory holding TensorBoard event files (directly or in subdirectories).
        vanishing: A gradient norm whose recent values average at most this is reported as
            vanishing.
        exploding: A gradient norm whose recent values are this many times its first ones is
            reported as exploding.

    Returns:
        One ``RunSummary`` per run directory, sorted by path (empty when there are no event files).

    Raises:
        FileNotFoundError: If ``logdir`` does not exist.

    Example:
        >>> import tempfile, tensorflow as tf
        >>> logdir = tempfile.mkdtemp()
        >>> with tf.summary.create_file_writer(logdir).as_default():  # flushed on exit
        ...     for step in range(3):
        ...         _ = tf.summary.scalar("loss", 1.0 / (step + 1), step=step)
        >>> [run] = summarize(logdir)
        >>> run.scalars["loss"].last, run.scalars["loss"].best()
        (0.333..., (0.333..., 2))
    """
    root = Path(logdir)
    runs = [_load(path, root) for path in find_runs(root)]
    for run in runs:
        for file in sorted(run.path.glob(_EVENT_GLOB)):
            problem = _unreadable(file, root)
            if problem:
                run.warnings.append(problem)
        _warn(run, vanishing, exploding)
    return runs


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _ratio(first: float, last: float) -> str:
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0 or last < 0:
        return "-"
    if last == 0:
        return "down to 0"
    ratio = last / first
    if 0.8 <= ratio <= 1.25:
        return "flat"
    return f"down {1 / ratio:.3g}x" if ratio < 1 else f"up {ratio:.3g}x"


def format_report(runs: list[RunSummary]) -> str:
    """Render summaries as the plain-text report ``tapekit inspect`` prints.

    Args:
        runs: What ``summarize`` returned.

    Returns:
        Lines of text (ASCII only), one block per run. Gradient norms are shown as the mean of
        their first and of their last tenth of points ("start -> end") and the ratio between them.

    Example:
        >>> print(format_report([]))
        No runs.
    """
    if not runs:
        return "No runs."
    from .curvature_report import curvature_findings

    lines: list[str] = []
    for run in runs:
        span = run.step_range
        steps = f"steps {span[0]}..{span[1]}" if span else "no scalars"
        files = f"{run.event_files} event file" + ("s" if run.event_files != 1 else "")
        lines.append(f"run {run.name}  ({steps}, {files}, {run.path})")
        plain = {t: s for t, s in run.scalars.items() if not t.startswith(_GRAD_PREFIX)}
        grads = run.gradient_norms
        width = max([len("gradient norm")] + [len(t) for t in plain] + [len(v) for v in grads]) + 2
        if plain:
            lines.append(f"  {'scalar':<{width}}{'last':<12}best")
            for tag, series in plain.items():
                best = series.best()
                best_text = f"{_fmt(best[0])} ({series.direction}, step {best[1]})" if best else "-"
                lines.append(f"  {tag:<{width}}{_fmt(series.last):<12}{best_text}")
        if grads:
            lines.append(f"  {'gradient norm':<{width}}{'start -> end':<24}trend")
            for var, series in grads.items():
                first, last = _trend(series)
                lines.append(
                    f"  {var:<{width}}{_fmt(first) + ' -> ' + _fmt(last):<24}{_ratio(first, last)}"
                )
        extra = [f"{kind} ({n})" for kind, n in sorted(run.other.items())]
        if run.has_graph:
            extra.append("a graph")
        if extra:
            lines.append("  also: " + ", ".join(extra))
        for w in run.warnings:
            lines.append(f"  WARNING {w}")
        lines += [f"  {kind} {text}" for kind, text in curvature_findings(run.scalars)]
        lines.append("")
    return "\n".join(lines).rstrip()
