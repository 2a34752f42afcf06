"""tapekit.board: RunWriters, GradientLogger, variable_tags, log_graph, write_concrete_graph.

Everything is read back from the real event files with TensorBoard's own EventAccumulator.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

import tapekit
from tapekit.board import (
    GradientLogger,
    RunWriters,
    log_figure,
    log_graph,
    resolve_logdir,
    variable_tags,
    write_concrete_graph,
)

ALL = {ea.TENSORS: 0, ea.GRAPH: 0, ea.SCALARS: 0, ea.HISTOGRAMS: 0}


def load(path) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(os.fspath(path), size_guidance=ALL)
    acc.Reload()
    return acc


def series(acc: ea.EventAccumulator, tag: str) -> dict[int, np.ndarray]:
    return {e.step: tf.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}


def graph_ops(acc: ea.EventAccumulator) -> dict[str, str]:
    return {n.name: n.op for n in acc.Graph().node}


# --- RunWriters -------------------------------------------------------------------------------


def test_run_writers_scalars_per_split_read_back(tmp_path):
    with RunWriters(tmp_path / "run") as run:
        run.check_writable()
        assert run.splits == []  # lazy: nothing created yet
        for step in range(3):
            run.scalars("train", {"loss": 1.0 / (step + 1), "accuracy": 0.5}, step=step)
        run.scalars("validation", {"loss": 0.75}, step=2)
        assert run.splits == ["train", "validation"]
    train, val = load(tmp_path / "run" / "train"), load(tmp_path / "run" / "validation")
    assert set(train.Tags()["tensors"]) == {"loss", "accuracy"}
    loss = series(train, "loss")
    assert sorted(loss) == [0, 1, 2]
    np.testing.assert_allclose([loss[s] for s in range(3)], [1.0, 0.5, 1 / 3], rtol=1e-6)
    assert series(val, "loss") == {2: pytest.approx(0.75)}
    assert sorted(os.listdir(tmp_path / "run")) == ["train", "validation"]


def test_run_writers_inside_tf_function(tmp_path):
    run = RunWriters(tmp_path)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def train_step(x):
        loss = tf.reduce_sum(x**2)
        run.scalars("train", {"loss": loss, "half": loss / 2}, step=step)  # writer made in trace
        step.assign_add(1)
        return loss

    for i in range(4):
        train_step(tf.constant([float(i), 1.0]))
    run.close()
    got = series(load(tmp_path / "train"), "loss")
    assert {k: float(v) for k, v in got.items()} == {0: 1.0, 1: 2.0, 2: 5.0, 3: 10.0}


def test_context_manager_closes_on_exception_and_nothing_is_lost(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with RunWriters(tmp_path) as run:
            run.scalars("train", {"loss": 3.0}, step=7)
            raise RuntimeError("boom")
    assert run.splits == []  # closed
    assert series(load(tmp_path / "train"), "loss") == {7: pytest.approx(3.0)}
    run.close()  # idempotent
    run.close()
    run.flush()


def test_use_after_close_opens_new_event_files(tmp_path):
    run = RunWriters(tmp_path)
    run.scalars("train", {"loss": 1.0}, step=0)
    run.close()
    run.scalars("train", {"loss": 2.0}, step=1)
    run.close()
    assert len(os.listdir(tmp_path / "train")) == 2
    assert sorted(series(load(tmp_path / "train"), "loss")) == [0, 1]


def test_check_writable_parent_is_a_file(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    logdir = blocker / "logs"
    with pytest.raises(NotADirectoryError, match=r"not_a_dir/logs.*not writable.*logdir=False"):
        RunWriters(logdir).check_writable()


def test_check_writable_logdir_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(OSError, match=r"file' is not writable.*Choose another logdir"):
        RunWriters(path).check_writable()


def test_check_writable_creates_the_directory(tmp_path):
    RunWriters(tmp_path / "a" / "b").check_writable()
    assert (tmp_path / "a" / "b").is_dir()
    assert os.listdir(tmp_path / "a" / "b") == []  # the probe file is gone


def test_disabled_run_writes_nothing(tmp_path):
    for run in (RunWriters(tmp_path / "off", enabled=False), RunWriters(False)):
        run.check_writable()
        run.scalars("train", {"loss": 1.0}, step=0)
        with run.writer("train").as_default(step=0):
            assert not tf.summary.scalar("x", 1.0)
        run.flush()
        run.close()
        assert not run.enabled
    assert not (tmp_path / "off").exists()


def test_logdir_none_means_the_default_directory_and_false_means_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with RunWriters(None, name="mlp") as run:  # None: logs/<name>-<time>, as for the Trainer
        assert run.enabled
        assert re.fullmatch(r"logs[/\\]mlp-\d{8}-\d{6}", run.logdir), run.logdir
        run.scalars("train", {"loss": 1.0}, step=0)
    assert [p.name for p in (tmp_path / run.logdir).iterdir()] == ["train"]
    off = RunWriters(False)
    assert off.logdir is None and not off.enabled
    assert resolve_logdir(tmp_path / "x") == str(tmp_path / "x")


def test_run_writers_errors(tmp_path):
    with pytest.raises(
        TypeError,
        match=r"RunWriters: `logdir` must be a directory path .* None "
        r"for the default directory logs/<name>-<time>, or False .* int 3",
    ):
        RunWriters(3)
    run = RunWriters(tmp_path)
    with pytest.raises(ValueError, match=r"plain names.*'train/x'"):
        run.writer("train/x")
    with pytest.raises(TypeError, match="mapping"):
        run.scalars("train", [1.0], step=0)
    with pytest.raises(ValueError, match=r"tag 'v' needs a scalar"):
        run.scalars("train", {"v": [1.0, 2.0]}, step=0)
    run.close()


# --- variable_tags / GradientLogger ------------------------------------------------------------


def two_dense_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )


def test_variable_tags_unique_from_keras_paths():
    model = two_dense_model()
    tags = variable_tags(model.trainable_variables)
    first, second = (layer.name for layer in model.layers)
    assert tags == [
        f"{model.name}/{first}/kernel",
        f"{model.name}/{first}/bias",
        f"{model.name}/{second}/kernel",
        f"{model.name}/{second}/bias",
    ]
    # Keras 3 calls every kernel 'kernel': the short names collide, the tags must not
    assert len({v.name for v in model.trainable_variables}) == 2


def test_variable_tags_plain_variables_and_duplicates():
    vs = [tf.Variable(1.0, name="w"), tf.Variable(1.0, name="w"), tf.Variable(1.0, name="w_1")]
    assert variable_tags(vs) == ["w", "w_2", "w_1"]
    assert variable_tags([tf.Variable(1.0)]) == ["Variable"]


def _train(model, logger, steps, compiled):
    opt = keras.optimizers.SGD(0.1)
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 3)), tf.float32)
    y = tf.reduce_sum(x, axis=1, keepdims=True)
    norms = {}

    def step_fn(step):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        logger(step, grads, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return grads

    fn = tf.function(step_fn) if compiled else step_fn
    for s in range(steps):
        grads = fn(tf.constant(s, tf.int64) if compiled else s)
        norms[s] = [float(tf.norm(g)) for g in grads]
    return norms


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_gradient_logger_norms_and_histograms(tmp_path, compiled):
    model = two_dense_model()
    logger = GradientLogger(tmp_path, histogram_every=2, norms_every=1)
    norms = _train(model, logger, steps=5, compiled=compiled)
    logger.close()
    acc = load(tmp_path)
    tags = logger.tags(model.trainable_variables)
    expected = {"gradient_norm/global"} | {f"gradient_norm/{t}" for t in tags}
    expected |= {f"gradients/{t}" for t in tags} | {f"weights/{t}" for t in tags}
    assert set(acc.Tags()["tensors"]) == expected
    for i, tag in enumerate(tags):
        got = series(acc, f"gradient_norm/{tag}")
        assert sorted(got) == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(
            [got[s] for s in range(5)], [norms[s][i] for s in range(5)], rtol=1e-5
        )
        hist = series(acc, f"gradients/{tag}")
        assert sorted(hist) == [0, 2, 4]  # only on logging steps
        size = np.prod(model.trainable_variables[i].shape)
        assert hist[0].shape[1] == 3 and hist[0][:, 2].sum() == size  # [left, right, count]
        assert sorted(series(acc, f"weights/{tag}")) == [0, 2, 4]
    total = series(acc, "gradient_norm/global")
    for s in range(5):
        assert float(total[s]) == pytest.approx(float(np.linalg.norm(norms[s])), rel=1e-5)


def test_gradient_logger_skips_none_and_off_switches(tmp_path):
    a, b = tf.Variable([3.0, 4.0], name="a"), tf.Variable(1.0, name="b")
    logger = GradientLogger(
        tf.summary.create_file_writer(os.fspath(tmp_path)), histogram_every=0, norms_every=3
    )
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(a * a)  # b unused: gradient None
        with tf.name_scope("outer"):  # tags stay exact
            logger(step, tape.gradient(loss, [a, b]), [a, b])
        step.assign_add(1)

    # Off-steps are cheap: the norms and writes live in a cond branch, not in the step's graph.
    top = {op.type for op in run.get_concrete_function().graph.get_operations()}
    assert top & {"If", "StatelessIf"} and not top & {"WriteSummary", "Sqrt", "EuclideanNorm"}
    for _ in range(7):
        run()
    logger.close()
    acc = load(tmp_path)
    assert set(acc.Tags()["tensors"]) == {"gradient_norm/global", "gradient_norm/a"}
    assert sorted(series(acc, "gradient_norm/a")) == [0, 3, 6]
    assert float(series(acc, "gradient_norm/global")[3]) == pytest.approx(10.0)


def test_gradient_logger_indexed_slices_and_disabled_writer(tmp_path):
    table = tf.Variable(tf.ones((4, 2)), name="table")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [0, 0, 2]))  # row 0 twice: dense grad rows 2, 1
    grad = tape.gradient(loss, table)
    assert isinstance(grad, tf.IndexedSlices)
    logger = GradientLogger(tmp_path, histogram_every=1)
    logger(5, [grad], [table])
    logger.close()
    acc = load(tmp_path)
    assert float(series(acc, "gradient_norm/table")[5]) == pytest.approx(math.sqrt(10.0))
    counts = series(acc, "gradients/table")[5][:, 2]
    assert counts.sum() == 8  # the dense gradient's 8 entries
    disabled = RunWriters(False)
    off = GradientLogger(disabled.writer("train"), enabled=disabled.enabled)
    off(0, [grad], [table])  # disabled: nothing to do, no error
    assert not off.enabled
    with pytest.raises(ValueError, match="one gradient per variable"):
        off(0, [], [table])


def test_gradient_logger_errors(tmp_path):
    with pytest.raises(TypeError, match="SummaryWriter or a log directory"):
        GradientLogger(3)
    with pytest.raises(ValueError, match=r"`histogram_every` to be an int >= 0.*-1"):
        GradientLogger(tmp_path, histogram_every=-1)
    logger = GradientLogger(tmp_path)
    v = tf.Variable(1.0)
    with pytest.raises(ValueError, match=r"one gradient per variable.*2 gradient\(s\) for 1"):
        logger(0, [tf.constant(1.0), tf.constant(2.0)], [v])
    logger.close()


# --- graphs ------------------------------------------------------------------------------------


def f(x, y):
    return x**2 * y + y + 2


def test_log_graph_of_python_function(tmp_path):
    run = log_graph(f, 3.0, 4.0, logdir=tmp_path)
    assert run == os.path.join(tmp_path, "f")
    acc = load(run)
    assert acc.Tags()["graph"]
    ops = graph_ops(acc)
    assert ops["x"] == ops["y"] == "Placeholder"  # floats became graph inputs
    assert {"Pow", "Mul", "AddV2"} <= set(ops.values())
    assert not any("gradient" in n for n in ops)


def test_log_graph_with_gradients_has_the_backward_pass(tmp_path):
    run = log_graph(f, 3.0, 4.0, logdir=tmp_path, gradients=True)
    assert os.path.basename(run) == "f_gradients"
    ops = graph_ops(load(run))
    assert {"Pow", "Mul", "AddV2", "Placeholder"} <= set(ops.values())
    backward = [n for n in ops if n.startswith("gradient_tape/")]
    assert backward and any(ops[n] == "Mul" for n in backward)
    # Inputs named after f's parameters, operand constants after their value (not `y`).
    assert ops["x"] == ops["y"] == "Placeholder"
    assert not [n for n in ops if n.startswith("args_")]
    assert ops["pow/const_2"] == ops["add_1/const_2"] == "Const"
    assert not [n for n, op in ops.items() if op == "Const" and n.split("/")[-1] in ("x", "y")]


def test_graphs_keep_constants_the_user_named(tmp_path):
    def g(x):
        with tf.name_scope("scale"):
            y = tf.constant(3.0, name="y")  # the user's own `y`: keeps its name
        return x * y + 1.0

    ops = graph_ops(load(log_graph(g, 2.0, logdir=tmp_path)))
    assert ops["scale/y"] == "Const" and ops["add/const_1"] == "Const"
    assert {n for n, op in ops.items() if op == "Mul"} == {"mul"}


def test_log_graph_of_tf_function_and_keras_model(tmp_path):
    double = tf.function(lambda x: x * 2.0)
    ops = graph_ops(load(log_graph(double, np.ones(3, np.float32), logdir=tmp_path, name="d")))
    assert "Mul" in ops.values()
    model = two_dense_model()
    run = log_graph(
        model, np.ones((2, 3), np.float32), logdir=tmp_path, name="model x/y", gradients=True
    )
    assert os.path.basename(run) == "model_x_y"
    ops = graph_ops(load(run))
    assert "MatMul" in ops.values() and "Tanh" in ops.values()
    assert any(n.startswith("gradient_tape/") and op == "MatMul" for n, op in ops.items())


def test_write_concrete_graph_to_a_writer(tmp_path):
    step = tf.function(lambda x: tf.sin(x) + 1.0)
    concrete = step.get_concrete_function(tf.TensorSpec([None], tf.float32))
    writer = tf.summary.create_file_writer(os.fspath(tmp_path / "train"))
    write_concrete_graph(concrete, writer, "train_step")
    with writer.as_default(step=0):
        tf.summary.scalar("loss", 1.0)
    writer.close()
    acc = load(tmp_path / "train")
    assert "Sin" in graph_ops(acc).values()
    assert acc.Tags()["tensors"] == ["loss"]  # the graph adds no other tags


def test_graph_errors(tmp_path):
    with pytest.raises(TypeError, match="Trace it first"):
        write_concrete_graph(lambda x: x, tmp_path, "f")
    with pytest.raises(TypeError, match="no input_signature"):
        write_concrete_graph(tf.function(lambda x: x), tmp_path, "f")
    with pytest.raises(TypeError, match="needs a callable"):
        log_graph(3.0, logdir=tmp_path)
    with pytest.raises(TypeError, match="`logdir` to be a directory"):
        log_graph(f, 1.0, 2.0, logdir=None)
    with pytest.raises(ValueError, match="return float tensor"):
        log_graph(lambda x: tf.constant(1), 1.0, logdir=tmp_path, gradients=True)


def test_board_is_reachable_from_tapekit():
    assert tapekit.board.RunWriters is RunWriters
    assert "explain" in tapekit.__all__ and tapekit.explain is tapekit.board.explain


@pytest.mark.parametrize("data", [np.linspace(-3.0, 5.0, 1001), np.full(7, 2.5), [0.1, -0.2, 0.3]])
def test_fast_histogram_matches_tensorboards_own(tmp_path, data):
    """Same format, edges and total as tf.summary.histogram; counts equal up to edge rounding."""
    from tapekit.board.gradients import histogram

    values = tf.constant(data, tf.float32)
    with tf.summary.create_file_writer(str(tmp_path)).as_default(step=3) as writer:
        tf.summary.histogram("theirs", values)
        histogram("ours", values)
        writer.flush()
    acc = load(tmp_path)
    theirs, ours = series(acc, "theirs")[3], series(acc, "ours")[3]
    assert ours.shape == theirs.shape == (30, 3)
    np.testing.assert_allclose(ours[:, :2], theirs[:, :2], rtol=1e-6)
    assert ours[:, 2].sum() == theirs[:, 2].sum() == len(data)
    assert np.abs(ours[:, 2] - theirs[:, 2]).max() <= 1  # a value on an edge may move one bucket
    meta = acc.SummaryMetadata("ours").plugin_data.plugin_name
    assert meta == acc.SummaryMetadata("theirs").plugin_data.plugin_name == "histograms"


# --- figures -----------------------------------------------------------------------------------


def test_log_figure_writes_the_rendered_plot_as_an_image(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    image = ax.imshow(np.arange(12.0).reshape(3, 4), cmap="viridis")
    fig.colorbar(image, ax=ax, label="value")
    ax.set(title="field", xlabel="x", ylabel="y")
    with tf.summary.create_file_writer(str(tmp_path / "default")).as_default(step=7):
        assert log_figure("plots/field", fig, description="a field")  # the default writer
    assert log_figure("plots/field", fig, step=3, writer=tmp_path / "dir", dpi=50)
    writer = tf.summary.create_file_writer(str(tmp_path / "writer"))
    assert log_figure("plots/field", fig, step=1, writer=writer)
    writer.close()
    assert not log_figure("plots/field", fig, step=0)  # no default writer: nothing written
    sizes = {}
    for run, step in (("default", 7), ("dir", 3), ("writer", 1)):
        [event] = load(tmp_path / run).Tensors("plots/field")
        assert event.step == step
        width, height, png = event.tensor_proto.string_val
        decoded = tf.image.decode_png(png).numpy()
        assert decoded.shape == (int(height), int(width), 4)
        assert decoded[..., :3].std() > 10  # a drawing, not a blank canvas
        sizes[run] = (int(width), int(height))
    assert sizes["default"] == sizes["writer"]
    assert sizes["dir"][0] == pytest.approx(sizes["default"][0] / 2, abs=3)  # dpi 50 vs 100


def test_log_figure_errors_and_no_matplotlib_on_import(tmp_path):
    import subprocess
    import sys

    with pytest.raises(TypeError, match=r"Matplotlib figure .* received ndarray.*summary\.image"):
        log_figure("x", np.zeros((2, 2)), step=0, writer=tmp_path)
    from matplotlib.figure import Figure

    with pytest.raises(TypeError, match=r"`writer` to be a tf.summary.SummaryWriter.*received int"):
        log_figure("x", Figure(), step=0, writer=3)
    # Matplotlib is an extra: `import tapekit` does not load it, and no tapekit module imports it
    # (the figure passed in brings it; TensorFlow itself loads it when it is installed).
    code = "import sys, tapekit, tapekit.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    package = Path(tapekit.__file__).parent
    assert not [p for p in package.rglob("*.py") if "import matplotlib" in p.read_text()]
