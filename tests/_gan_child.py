"""Child process for the GAN kill-and-resume test (tests/test_custom_step.py).

    python _gan_child.py CHECKPOINT_DIR OUT.npz [--kill-at STEP]

Trains the two-optimizer WGAN-GP of _gan.py (noise from ctx.rng) for 3 epochs of shuffled
real samples, checkpointing every 4 steps. With ``--kill-at``, it writes
``CHECKPOINT_DIR/../reached`` when that step is done and then waits to be killed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _gan  # noqa: E402
import numpy as np  # noqa: E402

import tapekit  # noqa: E402


class Stall(tapekit.Callback):
    def __init__(self, step: int, marker: str) -> None:
        super().__init__()
        self.step, self.marker = step, marker

    def on_step_end(self, step, logs=None):
        if step == self.step:
            with open(self.marker, "w") as f:
                f.write(str(step))
            while True:  # the parent sends SIGKILL
                time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpt")
    parser.add_argument("out")
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()
    callbacks = []
    if args.kill_at is not None:
        marker = os.path.join(os.path.dirname(args.ckpt.rstrip("/")), "reached")
        callbacks.append(Stall(args.kill_at, marker))
    trainer = _gan.trainer(checkpoint_dir=args.ckpt, checkpoint_every=4, callbacks=callbacks)
    history = trainer.fit(_gan.real_data(), epochs=3, batch_size=16, verbose=0)
    np.savez(
        args.out,
        *trainer.get_weights(),
        step=trainer.global_step,
        rng=trainer.rng.state.numpy(),
        loss=np.array(history["critic_loss"]),
        restored=str(trainer.restored_from),
    )


if __name__ == "__main__":
    main()
