"""The `tapekit` console command: recipes, run, inspect, board.

The installed console script runs as a real subprocess once (`tapekit recipes`, which needs no
TensorFlow); the other commands run in-process through `cli.main`, which is what the script
calls (recipes that `run` starts are still real subprocesses). Event files are written with
tf.summary and read back by the command. `tapekit board` serving a real TensorBoard until Ctrl+C
is tested in test_tensorboard_server.py (one server for both server tests); running a real recipe
with options through `tapekit run` is test_recipes.py's run of recipe 01.
"""

from __future__ import annotations

import ast
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tapekit import cli
from tapekit.board import reader

TAPEKIT = Path(sys.executable).with_name("tapekit")
ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TAPEKIT_RECIPES", None)
    env.pop("TAPEKIT_COMMAND", None)
    env.update(extra)
    return env


def tapekit(*args: str, cwd: Path | None = None, timeout: float = 120, **env: str):
    """Run the installed `tapekit` console script."""
    return subprocess.run(
        [str(TAPEKIT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(**env),
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _as_the_tapekit_command(monkeypatch):
    """Hints name `tapekit` (not `python3 dev.py`, which sets TAPEKIT_COMMAND) unless a test
    sets it."""
    monkeypatch.delenv("TAPEKIT_COMMAND", raising=False)


def _write_training_logs(logdir: Path) -> None:
    """A 'train' run with healthy, vanishing, exploding and NaN gradient norms, and 'validation'."""
    with tf.summary.create_file_writer(str(logdir / "train")).as_default():
        for step in range(20):
            tf.summary.scalar("loss", 2.0 / (step + 1), step=step)
            tf.summary.scalar("accuracy", min(0.5 + 0.05 * step, 0.9), step=step)
            tf.summary.scalar("learning_rate", 0.1, step=step)
            tf.summary.scalar("epoch_loss", 3.0 - 0.1 * step, step=step)
            tf.summary.scalar("gradient_norm/dense/kernel", 1.0 / (1 + 0.1 * step), step=step)
            tf.summary.scalar("gradient_norm/stuck/bias", 10.0 ** (-step), step=step)
            tf.summary.scalar("gradient_norm/wild/kernel", 10.0 ** (step / 4), step=step)
            nan_value = float("nan") if step >= 12 else 1.0
            tf.summary.scalar("gradient_norm/broken/kernel", nan_value, step=step)
        tf.summary.histogram("weights/dense/kernel", tf.range(5.0), step=0)
    with tf.summary.create_file_writer(str(logdir / "validation")).as_default():
        for step in (9, 19):
            tf.summary.scalar("loss", 1.5 if step == 9 else 1.0, step=step)


# --- tapekit recipes / run ---------------------------------------------------------------------


def test_recipes_lists_every_recipe_with_its_docstring_line():
    result = tapekit("recipes")  # the installed console script, as a subprocess
    assert result.returncode == 0, result.stderr
    files = sorted(p for p in (ROOT / "recipes").glob("[0-9]*_*.py"))
    assert files, "no recipes found"
    for path in files:
        first_line = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0].strip()
        assert re.search(
            rf"^{re.escape(path.stem)}\s+{re.escape(first_line)}$", result.stdout, re.M
        )
    assert "tapekit run NAME" in result.stdout


def test_recipes_without_a_recipes_folder_says_where_they_live(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TAPEKIT_RECIPES", str(tmp_path / "nowhere"))
    assert cli.main(["recipes"]) == 2
    err = capsys.readouterr().err
    assert "tapekit recipes: error: No recipes folder at" in err
    assert "pip install -e ." in err


@pytest.mark.slow
def test_run_help_is_the_recipe_help(capfd):
    assert cli.main(["run", "01", "--help"]) == 0  # the recipe is a real subprocess
    out = capfd.readouterr().out
    assert "usage: 01_gradients.py" in out
    assert "--logdir" in out


def test_run_unknown_recipe_lists_the_names(capsys, monkeypatch):
    monkeypatch.delenv("TAPEKIT_RECIPES", raising=False)
    assert cli.main(["run", "no_such_recipe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tapekit run: error: Unknown recipe 'no_such_recipe'")
    for recipe in cli.list_recipes():
        assert recipe.name in err
    assert "Run `tapekit recipes` for descriptions." in err
    monkeypatch.setenv("TAPEKIT_COMMAND", "python3 dev.py")  # what dev.py sets: hints name it
    assert cli.main(["run", "no_such_recipe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python3 dev.py run: error: Unknown recipe")
    assert "Run `python3 dev.py recipes` for descriptions." in err


def test_run_returns_the_recipe_status_and_quietens_tensorflow(tmp_path, monkeypatch, capfd):
    (tmp_path / "01_env.py").write_text(
        '"""Prints its environment."""\nimport os, sys\n'
        'print("level", os.environ.get("TF_CPP_MIN_LOG_LEVEL"), sys.argv[1:])\n'
    )
    (tmp_path / "02_fail.py").write_text('"""Fails."""\nraise SystemExit(3)\n')
    monkeypatch.setenv("TAPEKIT_RECIPES", str(tmp_path))
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert cli.main(["run", "env", "--x", "1"]) == 0
    assert "level 2 ['--x', '1']" in capfd.readouterr().out
    assert cli.main(["run", "2"]) == 3


def test_find_recipe_accepts_number_stem_topic_and_unique_prefix(tmp_path):
    for name in ("01_alpha.py", "02_alps.py", "10_beta.py", "notes.py", "README.md"):
        (tmp_path / name).write_text('"""Line one.\n\nMore."""\n')
    recipes = cli.list_recipes(tmp_path)
    assert [r.name for r in recipes] == ["01_alpha", "02_alps", "10_beta"]
    assert recipes[0].description == "Line one."
    for name, want in [("1", "01_alpha"), ("01", "01_alpha"), ("10", "10_beta"),
                       ("02_alps", "02_alps"), ("alps.py", "02_alps"), ("ALPHA", "01_alpha"),
                       ("bet", "10_beta"), ("02_alps.py", "02_alps")]:  # fmt: skip
        assert cli.find_recipe(name, recipes).name == want
    with pytest.raises(ValueError, match=r"'al' is ambiguous: it matches 01_alpha, 02_alps"):
        cli.find_recipe("al", recipes)
    with pytest.raises(ValueError, match=r"Unknown recipe '3'. Available recipes: 01_alpha, "):
        cli.find_recipe("3", recipes)


# --- tapekit inspect ---------------------------------------------------------------------------


def test_summarize_reads_steps_last_best_and_warns(tmp_path):
    _write_training_logs(tmp_path)
    runs = {r.name: r for r in reader.summarize(tmp_path)}
    assert sorted(runs) == ["train", "validation"]
    train = runs["train"]
    assert train.step_range == (0, 19)
    loss = train.scalars["loss"]
    assert loss.last == pytest.approx(0.1) and loss.best() == (pytest.approx(0.1), 19)
    assert train.scalars["accuracy"].best() == (pytest.approx(0.9), 8)
    assert train.scalars["learning_rate"].best() is None
    assert train.scalars["epoch_loss"].best() == (pytest.approx(1.1), 19)
    assert sorted(train.gradient_norms) == [
        "broken/kernel",
        "dense/kernel",
        "stuck/bias",
        "wild/kernel",
    ]
    assert train.other == {"histograms": 1}
    text = "\n".join(train.warnings)
    assert "gradient_norm/stuck/bias: vanishing" in text
    assert "gradient_norm/wild/kernel: exploding" in text
    assert "gradient_norm/broken/kernel: non-finite gradient norm (NaN/inf) from step 12" in text
    assert "dense/kernel" not in text
    assert runs["validation"].scalars["loss"].steps == [9, 19]
    assert runs["validation"].warnings == []


@pytest.mark.parametrize(
    ("tag", "direction"),
    [
        ("loss", "min"),
        ("epoch_loss", "min"),
        ("step/loss", "min"),  # the Trainer's tags
        ("epoch/loss", "min"),
        ("step/acc", "max"),
        ("epoch/acc", "max"),
        ("epoch/mean_absolute_error", "min"),
        ("step/critic_loss", "min"),
        ("optimizer/learning_rate", None),
        ("optimizer/steps_per_second", None),
        ("optimizer/loss_scale", None),
        ("optimizer/critic/loss_scale", None),
        ("optimizer/critic/learning_rate", None),
        ("optimizer/skipped_steps", None),
        ("update_ratio/net/dense/kernel", None),
        ("loss/train", "min"),
        ("val_acc", "max"),
        ("metrics/accuracy", "max"),
        ("max_error_vs_exact", "min"),
        ("meta_train/loss_after_adaptation", "min"),
        ("sliced_wasserstein_distance", "min"),
        ("tanh/f", None),  # function curves: the step is the index of an x value
        ("tanh/d2f", None),
        ("cut_at_y0/df_dx", None),
        ("descent/x", None),
        ("naive/softplus", None),
        ("learning_rate", None),
        ("steps_per_second", None),
        ("gradient_norm/global", None),
        ("lossless", None),
    ],
)
def test_best_is_only_for_training_curves(tag, direction):
    series = reader.ScalarSeries(tag, [0, 1, 2], [3.0, 1.0, 2.0])
    assert series.direction == direction
    assert series.best() == {"min": (1.0, 1), "max": (3.0, 0), None: None}[direction]


def _corrupt_copies(logdir: Path) -> dict[str, Path]:
    """Three runs of 20 loss values each: one bit flipped, one cut short, one random bytes."""
    files = {}
    for run in ("flipped", "truncated", "garbage"):
        with tf.summary.create_file_writer(str(logdir / run)).as_default():
            for step in range(20):
                tf.summary.scalar("loss", 1.0 / (step + 1), step=step)
        [files[run]] = (logdir / run).glob("events.out.tfevents.*")
    data = bytearray(files["flipped"].read_bytes())
    data[len(data) // 2] ^= 0x10
    files["flipped"].write_bytes(bytes(data))
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:-5])
    files["garbage"].write_bytes(np.random.default_rng(0).bytes(300))
    return files


def test_unreadable_event_files_are_named_in_a_warning(tmp_path, capsys):
    files = _corrupt_copies(tmp_path)
    _write_training_logs(tmp_path / "fine")
    runs = {r.name: r for r in reader.summarize(tmp_path)}
    fine = runs["fine/train"].warnings + runs["fine/validation"].warnings
    assert not [w for w in fine if "could not be read" in w]  # intact files: no such warning
    for run, where in (("flipped", "corrupted record at"), ("truncated", "truncated record at"),
                       ("garbage", "corrupted record at 0")):  # fmt: skip
        [warning] = [w for w in runs[run].warnings if "could not be read" in w]
        assert warning.startswith(f"event file {run}/{files[run].name} could not be read after ")
        assert where in warning and "delete it, or rerun the script that wrote it" in warning
    assert "after 0 record(s)" in runs["garbage"].warnings[0]
    assert len(runs["flipped"].scalars["loss"].steps) < 20  # what TensorBoard silently drops
    assert cli.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"WARNING event file garbage/{files['garbage'].name} could not be read" in out


def test_summarize_keeps_the_latest_value_when_a_run_is_repeated(tmp_path):
    for value in (5.0, 7.0):  # two runs into the same directory, same steps
        writer = tf.summary.create_file_writer(str(tmp_path))
        with writer.as_default():
            for step in range(3):
                tf.summary.scalar("loss", value + step, step=step)
        writer.close()
        time.sleep(0.01)
    [run] = reader.summarize(tmp_path)
    assert run.name == "." and run.event_files == 2
    assert run.scalars["loss"].values == [7.0, 8.0, 9.0]


def test_inspect_prints_a_report_per_run(tmp_path, capsys):
    _write_training_logs(tmp_path / "mlp")
    assert cli.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^run mlp/train  \(steps 0\.\.19, 1 event file, ", out, re.M)
    assert re.search(r"^run mlp/validation  \(steps 9\.\.19, ", out, re.M)
    assert re.search(r"^  loss\s+0\.1\s+0\.1 \(min, step 19\)$", out, re.M)
    assert re.search(r"^  accuracy\s+0\.9\s+0\.9 \(max, step 8\)$", out, re.M)
    assert re.search(r"^  learning_rate\s+0\.1\s+-$", out, re.M)
    assert re.search(r"^  dense/kernel\s+0\.9\d* -> 0\.3\d*\s+down 2\.\d+x$", out, re.M)
    assert re.search(r"^  WARNING gradient_norm/stuck/bias: vanishing", out, re.M)
    assert re.search(r"^  WARNING gradient_norm/wild/kernel: exploding, grew", out, re.M)
    assert re.search(r"^  WARNING gradient_norm/broken/kernel: non-finite .* step 12", out, re.M)
    assert "also: histograms (1)" in out


def test_inspect_reads_a_real_trainer_run_by_its_grouped_tags(tmp_path, capsys):
    import keras

    import tapekit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = (x[:, :1] + x[:, 1:] > 0).astype("float32")

    def bce(model, batch):
        pred = model(batch[0], training=True)
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(batch[1], pred))
        return loss, {"y_true": batch[1], "y_pred": pred}

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])

    trainer = tapekit.Trainer(
        build, bce, optimizer=keras.optimizers.SGD(0.5), metrics=["accuracy"], logdir=tmp_path,
        log_every=2, histogram_every=0, seed=0,
    )  # fmt: skip
    hist = trainer.fit(
        (x[:48], y[:48]), epochs=3, batch_size=16, validation_data=(x[48:], y[48:]), verbose=0
    )
    trainer.close()
    runs = {r.name: r for r in reader.summarize(tmp_path)}
    train, val = runs["train"].scalars, runs["validation"].scalars
    for scalars, prefix in ((train, ""), (val, "val_")):
        steps = [3, 6, 9]  # three batches per epoch: the global step at each epoch's end
        for tag, key, pick, direction in (
            ("epoch/loss", "loss", min, "min"),
            ("epoch/accuracy", "accuracy", max, "max"),
        ):
            values = hist[prefix + key]
            best = pick(values)
            assert scalars[tag].steps == steps and scalars[tag].direction == direction
            assert scalars[tag].best() == (pytest.approx(best), steps[values.index(best)])
    assert val["step/loss"].steps == [3, 6, 9] and val["step/loss"].best() is not None
    for tag in ("optimizer/learning_rate", "optimizer/steps_per_second", "gradient_norm/global"):
        assert train[tag].best() is None, tag
    assert train["optimizer/learning_rate"].values == pytest.approx([0.5] * 3)
    assert cli.main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  epoch/loss\s+\S+\s+\S+ \(min, step \d\)$", out, re.M)
    assert re.search(r"^  epoch/accuracy\s+\S+\s+\S+ \(max, step \d\)$", out, re.M)
    assert re.search(r"^  optimizer/learning_rate\s+0\.5\s+-$", out, re.M)
    assert re.search(r"^  optimizer/steps_per_second\s+\S+\s+-$", out, re.M)
    table = out.split("run validation")[0].split("  gradient norm")[0].splitlines()
    rows = [line.split()[0] for line in table[2:]]
    assert rows == [  # the groups, top-down in TensorBoard's order
        "epoch/accuracy",
        "epoch/loss",
        "optimizer/learning_rate",
        "optimizer/steps_per_second",
        "step/loss",
    ]


def test_inspect_thresholds_are_options(tmp_path, capsys):
    _write_training_logs(tmp_path)
    assert cli.main(["inspect", str(tmp_path), "--vanishing", "0", "--exploding", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "vanishing" not in out and "exploding" not in out
    assert "non-finite" in out


def test_inspect_errors_missing_and_empty(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert "does not exist. Run a recipe first, e.g. `tapekit run 01`" in err
    assert "Traceback" not in err

    assert cli.main(["inspect", str(tmp_path)]) == 1
    assert "No TensorBoard event files (events.out.tfevents.*) under" in capsys.readouterr().err


def test_inspect_of_a_file_asks_for_the_directory(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    assert cli.main(["inspect", str(tmp_path / "file.txt")]) == 2
    assert "is a file; pass the directory that holds the logs" in capsys.readouterr().err


def test_inspect_defaults_to_logs_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["inspect"]) == 2
    assert "'logs' does not exist" in capsys.readouterr().err
    _write_training_logs(tmp_path / "logs" / "run1")
    assert cli.main(["inspect"]) == 0
    assert "run run1/train" in capsys.readouterr().out


def test_format_report_of_non_finite_values_is_plain_ascii():
    series = reader.ScalarSeries("loss", [0, 1], [1.0, math.inf])
    run = reader.RunSummary("r", Path("r"), 1, scalars={"loss": series})
    text = reader.format_report([run])
    assert "inf" in text and text.isascii()


# --- tapekit board -----------------------------------------------------------------------------


def test_board_missing_logdir_says_what_to_run_first(tmp_path, capsys):
    assert cli.main(["board", str(tmp_path / "nope")]) == 2
    assert "does not exist. Run a recipe first" in capsys.readouterr().err


@pytest.mark.slow
def test_board_busy_port_is_a_clear_error(tmp_path):
    # A subprocess: TensorBoard starts its data server before it finds the port taken, and that
    # helper ends with its parent process (in-process, it would outlive the test).
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = tapekit("board", str(tmp_path), "--port", str(port))
    assert result.returncode == 2
    assert "TensorBoard could not start" in result.stderr and "Try another --port" in result.stderr
