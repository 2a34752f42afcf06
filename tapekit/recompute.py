"""``checkpoint`` (alias ``remat``): recompute a function's activations in the backward pass.

Built on ``tf.custom_gradient``, like ``tf.recompute_grad``, but without its limits: the
arguments may be nests, keyword arguments and non-tensor values (only the float tensors are
inputs of the custom gradient, so graph mode accepts it); variables read inside ``fn`` (a Keras
layer's weights) get their gradients; and the backward pass is an ordinary recorded computation,
so gradients of gradients (``hessian``, nested tapes, forward-over-reverse) work, where
``tf.recompute_grad`` raises ``NotImplementedError``.

The forward pass runs with the tape paused, so only ``fn``'s inputs are kept; the backward pass
runs ``fn`` again on a local tape. In a graph the recomputation is made to depend on the
incoming gradient (as ``tf.recompute_grad`` does), so Grappler cannot merge it with the forward
pass and the savings survive ``tf.function``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf
from tensorflow.python.eager import forwardprop_util as _forwardprop_util
from tensorflow.python.eager import record as _record

from . import _args, _compile, _tensors

__all__ = ["checkpoint", "remat"]


def _is_input(leaf: Any) -> bool:
    """A float tensor (or array) argument leaf: differentiated through the custom gradient."""
    return isinstance(leaf, tf.Tensor) and leaf.dtype.is_floating


def _after(values: list[tf.Tensor], grads: tuple) -> list[tf.Tensor]:
    """``values`` with a data dependency on the incoming gradient (no-op numerically)."""
    if tf.executing_eagerly() or not values:
        return [tf.identity(v) for v in values]
    first = next((g for g in grads if g is not None), None)
    if first is None:
        return [tf.identity(v) for v in values]
    elem = tf.reduce_max(tf.reshape(first, [-1])[:1])  # -inf for an empty tensor
    dep = tf.where(tf.cast(elem, tf.bool) == tf.cast(elem, tf.bool), 0.0, float("nan"))
    return [v + tf.cast(dep, v.dtype) for v in values]


def checkpoint(fn: Callable) -> Callable:
    """Make a version of ``fn`` whose gradient recomputes ``fn`` instead of storing its insides.

    ``checkpoint(fn)`` returns the same values and the same derivatives (of every order) as
    ``fn``; only memory and time differ: the activations inside ``fn`` are not kept on the tape
    for the backward pass but recomputed there, so a gradient through ``k`` checkpointed blocks
    holds one block's activations at a time plus the blocks' inputs. Works eagerly, inside
    ``tf.function``, inside tapekit transforms and a ``Trainer`` ``loss_fn``, with variables
    and Keras layers read inside ``fn``.

    ``fn`` runs twice per gradient, so random ops (dropout) must give the same values both
    times (seed them per step, e.g. stateless ops), and state updates inside ``fn`` (batch
    normalization statistics in training mode) happen twice.

    Args:
        fn: A function (or Keras layer / model) returning a tensor or a nest of tensors. Its
            float tensor arguments (also inside nests and keyword arguments) are
            differentiated; other arguments are passed through unchanged.

    Returns:
        A function with ``fn``'s signature and results.

    Raises:
        TypeError: If ``fn`` is not callable.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> block = tapekit.checkpoint(lambda x: tf.sin(x) * x)
        >>> float(tapekit.grad(block)(2.0))  # cos(2)·2 + sin(2), recomputed in the backward pass
        0.077...
    """
    _args.check_callable(fn, "checkpoint")

    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        nest = (list(args), kwargs)
        leaves = tf.nest.flatten(nest)
        where = [i for i, leaf in enumerate(leaves) if _is_input(leaf)]
        structure: list[Any] = []

        def call(inputs: Any) -> Any:
            filled = list(leaves)
            for i, t in zip(where, inputs):
                filled[i] = t
            a, k = tf.nest.pack_sequence_as(nest, filled)
            return _compile.autographed(fn)(*a, **k)  # as tf.function would

        @tf.custom_gradient
        def recorded(*inputs: tf.Tensor) -> Any:
            if tf.executing_eagerly():  # the tape keeps only the inputs, not fn's insides
                with _record.stop_recording():
                    out = call(inputs)
            else:  # a graph: the backward graph uses grad_fn only, so fn's insides are freed;
                out = call(inputs)  # recording them keeps forward-mode tangents flowing
            structure.append(out)
            flat_out = [tf.convert_to_tensor(o) for o in tf.nest.flatten(out)]

            def grad_fn(*douts: tf.Tensor, variables: list | None = None) -> Any:
                again = _after(list(inputs), douts)
                watched = list(variables or [])
                # a ForwardAccumulator transposing this function (forward mode) would otherwise
                # keep the local tape from recording, and the gradient would silently be zero
                with _forwardprop_util.push_forwardprop_state():
                    with tf.GradientTape(watch_accessed_variables=False) as tape:
                        tape.watch(again + watched)
                        redo = [tf.convert_to_tensor(o) for o in tf.nest.flatten(call(again))]
                cots = [tf.zeros_like(r) if d is None else d for r, d in zip(redo, douts)]
                grads = tape.gradient(
                    redo,
                    again + watched,
                    output_gradients=cots,
                    unconnected_gradients=_tensors.ZERO,
                )
                grads = [tf.convert_to_tensor(g) for g in grads]  # IndexedSlices from gathers
                n = len(again)
                return (grads[:n], grads[n:]) if variables else grads[:n]

            return flat_out, grad_fn

        flat = recorded(*[leaves[i] for i in where])
        return tf.nest.pack_sequence_as(structure[-1], tf.nest.flatten(flat))

    name = _args.fn_name(fn)
    checkpointed.__name__ = checkpointed.__qualname__ = f"checkpoint_of_{name}"
    checkpointed.__doc__ = f"`{name}`, recomputed in the backward pass; see tapekit.checkpoint."
    checkpointed.__wrapped__ = fn
    return _compile.no_autograph(checkpointed)


remat = checkpoint  # JAX's alias
_compile.no_autograph(checkpoint)
