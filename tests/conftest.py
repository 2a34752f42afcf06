"""Test set-up shared by every test module.

TensorFlow's logical devices must be configured before it initialises, so this runs first:
the one physical CPU is split into two logical CPUs, giving MirroredStrategy two replicas.

A shell without job control starts a background command (``cmd &``) with SIGINT ignored, and
every process it starts inherits that, so Ctrl+C tests would see SIG_IGN instead of Python's
handler and a real `tapekit board` child would ignore the Ctrl+C it is sent. The test process
takes Python's default handler back (children then start with the default disposition).
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: TensorFlow's C++ start-up lines stay hidden (xdist too)

import signal

import numpy as np
import pytest
import tensorflow as tf

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background: see above
    signal.signal(signal.SIGINT, signal.default_int_handler)

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
except RuntimeError:  # already initialised (e.g. a plugin touched TF first); tests needing 2 skip
    pass


@pytest.fixture(scope="session")
def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """The one MirroredStrategy over the 2 logical CPUs that every test shares.

    A second MirroredStrategy over the same devices in one process reuses the collective keys of
    the first and TensorFlow aborts with a shape mismatch, so tests must not create their own.
    """
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the 2 logical CPUs set up in conftest.py")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded NumPy generator, so every test sees the same random inputs."""
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["tf"] = tf
    doctest_namespace["np"] = np
