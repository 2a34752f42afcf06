"""Shared by the custom-step recipes (07, 08, 09): run options, checkpoints and the weights digest.

Each of those recipes trains on ``tapekit.Trainer`` with a step it writes itself and takes
``--steps N --checkpoint-dir DIR --checkpoint-every K --resume``; its last line is
``weights sha256: <16 hex digits>`` over all trainable weights' bytes, so a run killed and
resumed can be compared with an uninterrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np


def add_run_arguments(parser: argparse.ArgumentParser, steps: int, what: str) -> None:
    """Add ``--steps``, ``--checkpoint-dir``, ``--checkpoint-every`` and ``--resume``."""
    parser.add_argument("--steps", type=int, default=steps, help=f"{what} (default {steps})")
    parser.add_argument("--checkpoint-dir", default=None, help="save checkpoints here")
    parser.add_argument(
        "--checkpoint-every", type=int, default=None, help="also save every K steps"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in the dir"
    )


def checkpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer keyword arguments for the checkpoint options; refuses ambiguous combinations.

    Raises:
        SystemExit: For ``--resume`` without ``--checkpoint-dir``, or a directory that already
            holds checkpoints without ``--resume``.
    """
    if args.checkpoint_dir is None:
        if args.resume or args.checkpoint_every:
            raise SystemExit("--resume and --checkpoint-every need --checkpoint-dir DIR.")
        return {}
    held = list(Path(args.checkpoint_dir).glob("ckpt-*.index"))
    if held and not args.resume:
        raise SystemExit(
            f"{args.checkpoint_dir} already holds checkpoints; pass --resume to continue from "
            "the newest, or remove the directory to start afresh."
        )
    return {"checkpoint_dir": args.checkpoint_dir, "checkpoint_every": args.checkpoint_every}


def epochs_of(steps: int, target: int) -> tuple[int, int]:
    """``(steps_per_epoch, epochs)`` with ``steps_per_epoch <= target`` dividing ``steps``."""
    if steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {steps}.")
    per_epoch = next(d for d in range(min(target, steps), 0, -1) if steps % d == 0)
    return per_epoch, steps // per_epoch


def fresh_logdir(logdir: str, resume: bool) -> str:
    """Remove a previous run's logs (kept when resuming, so its curves continue)."""
    if not resume:
        shutil.rmtree(logdir, ignore_errors=True)
    return logdir


def weights_digest(variables: list[Any]) -> str:
    """The first 16 hex digits of the sha256 of the variables' bytes, in order."""
    data = b"".join(np.ascontiguousarray(v.numpy()).tobytes() for v in variables)
    return hashlib.sha256(data).hexdigest()[:16]
