"""What the Trainer trains: a Keras model, a ``tf.Module`` or a nest of ``tf.Variable``s.

This module finds the trainable variables and their readable names, builds the model from a
factory inside the strategy scope and the mixed-precision policy, and checks that variables and
optimizer live in the strategy they will be trained with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from .._args import leaf_paths
from ..errors import describe_received

__all__ = [
    "all_variables",
    "build_model",
    "build_models",
    "check_in_scope",
    "check_positive",
    "check_step_arguments",
    "resolve_optimizer",
    "resolve_optimizers",
    "tf_variable",
    "trainable_variables",
    "variable_names",
]

_POLICIES = ("mixed_float16", "mixed_bfloat16")


def _is_model_object(obj: Any) -> bool:
    return isinstance(obj, (keras.layers.Layer, tf.Module, tf.Variable, keras.Variable))


def _is_nest(obj: Any) -> bool:
    return isinstance(obj, (dict, list, tuple))


def build_model(model: Any, strategy: tf.distribute.Strategy, mixed_precision: str | None) -> Any:
    """Return the model to train; call it first if it is a factory.

    A zero-argument factory is called inside ``strategy.scope()`` with the Keras global dtype
    policy set to ``mixed_precision`` (the previous global policy is restored afterwards).

    Raises:
        ValueError: If ``mixed_precision`` is unknown, or a ready-made Keras model was not built
            under that policy.
        TypeError: If ``model`` is none of the accepted kinds.
    """
    if mixed_precision not in (None, *_POLICIES):
        raise ValueError(
            f"mixed_precision must be None, 'mixed_float16' or 'mixed_bfloat16', but received "
            f"{mixed_precision!r}."
        )
    if not (_is_model_object(model) or _is_nest(model)) and callable(model):
        previous = keras.config.dtype_policy()
        try:
            if mixed_precision:
                keras.config.set_dtype_policy(mixed_precision)
            with strategy.scope():
                model = model()
        finally:
            keras.config.set_dtype_policy(previous)
    if isinstance(model, keras.layers.Layer) and mixed_precision:
        policy = model.dtype_policy.name
        if policy != mixed_precision:
            raise ValueError(
                f"mixed_precision={mixed_precision!r} needs the model's layers to be created under "
                f"that dtype policy, but the model given has policy {policy!r}. Pass a factory "
                f"instead (model=lambda: build_model()); the Trainer then sets the policy while "
                f"building it and restores the global policy afterwards."
            )
    if not (_is_model_object(model) or _is_nest(model)):
        raise TypeError(
            "Trainer needs `model` to be a keras.Model, a tf.Module, a tf.Variable or a "
            f"dict/list/tuple of tf.Variables (or a zero-argument factory of one), but received "
            f"{describe_received(model)}."
        )
    return model


def trainable_variables(model: Any) -> list[Any]:
    """The trainable variables of ``model``, in a stable order, without duplicates.

    Example:
        >>> [v.name for v in trainable_variables({"w": tf.Variable(1.0, name="w")})]
        ['w:0']
    """
    if isinstance(model, (keras.layers.Layer, tf.Module)):
        found = list(model.trainable_variables)
    else:
        found = [v for v in tf.nest.flatten(model) if getattr(v, "trainable", False)]
    unique, seen = [], set()
    for v in found:
        key = id(v)
        if key not in seen:
            seen.add(key)
            unique.append(v)
    if not unique:
        raise ValueError(
            f"Trainer found no trainable variables in `model` ({describe_received(model)}). "
            "Build the Keras model first (call it once or give it an Input), or pass "
            "tf.Variables with trainable=True."
        )
    return unique


def variable_names(model: Any, variables: list[Any]) -> list[str]:
    """Readable, unique names: Keras ``variable.path``, the key path in a dict, else ``name``.

    Example:
        >>> variable_names({"w": tf.Variable(1.0)}, [])
        []
    """
    by_id: dict[int, str] = {}
    if _is_nest(model):
        for path, leaf in zip(leaf_paths(model), tf.nest.flatten(model)):
            key = path.strip("[]'\"") or "variable"
            if not key.isdigit():  # a list position says less than the variable's own name
                by_id[id(leaf)] = key
    names, used = [], set()
    for v in variables:
        name = getattr(v, "path", None) or by_id.get(id(v)) or v.name.split(":")[0]
        base, k = name, 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        names.append(name)
    return names


def all_variables(models: dict[str, Any]) -> list[Any]:
    """Every variable (trainable and not) of each model, in model order.

    Example:
        >>> [v.name for v in all_variables({"a": [tf.Variable(1.0, name="w")]})]
        ['w:0']
    """
    out: list[Any] = []
    for m in models.values():
        if isinstance(m, (keras.layers.Layer, tf.Module)):
            out += list(m.variables)
        else:
            out += [v for v in tf.nest.flatten(m) if isinstance(v, tf.Variable)]
    return out


def tf_variable(v: Any) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras variable (``.value``), or ``v`` itself.

    Example:
        >>> v = tf.Variable(1.0)
        >>> tf_variable(v) is v, tf_variable(keras.Variable(1.0)).__class__.__name__
        (True, 'ResourceVariable')
    """
    return v.value if isinstance(v, keras.Variable) else v


def check_in_scope(
    variables: list[Any], optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy
) -> None:
    """Raise ``ValueError`` if variables or optimizer were made outside ``strategy.scope()``."""
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return  # the default strategy: nothing to check
    outside = [
        v for v in variables if not strategy.extended.variable_created_in_scope(tf_variable(v))
    ]
    if outside:
        raise ValueError(
            f"Under {type(strategy).__name__}, the model's variables must be created inside "
            f"strategy.scope(), but {len(outside)} were not (e.g. {outside[0].name}). Build the "
            f"model inside `with strategy.scope():`, or pass a factory: Trainer(model=build_model)."
        )
    owner = getattr(optimizer, "_distribution_strategy", strategy)
    if owner is not strategy:
        raise ValueError(
            f"Under {type(strategy).__name__}, the optimizer must be created inside "
            "strategy.scope(), but it was created outside. Pass its name (optimizer='adam') or "
            "create it inside `with strategy.scope():`."
        )


def resolve_optimizer(
    optimizer: Any, strategy: tf.distribute.Strategy, mixed_precision: str | None
) -> keras.optimizers.Optimizer:
    """A Keras optimizer (from a name or an instance), wrapped for float16 loss scaling."""
    if isinstance(optimizer, str):
        with strategy.scope():
            optimizer = keras.optimizers.get(optimizer)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "Trainer needs `optimizer` to be a Keras optimizer or its name (e.g. 'adam'), but "
            f"received {describe_received(optimizer)}."
        )
    for attr in ("clipnorm", "global_clipnorm", "clipvalue"):
        if getattr(optimizer, attr, None) is not None:
            raise ValueError(
                f"The optimizer has {attr}={getattr(optimizer, attr)}, but Keras clips each "
                "replica's gradient before aggregation. Use Trainer(clip_norm=...) or "
                "Trainer(clip_value=...), which clip the aggregated gradient, instead."
            )
    if getattr(optimizer, "gradient_accumulation_steps", None):
        raise ValueError(
            "Use Trainer(accumulate_steps=...) instead of the optimizer's "
            "gradient_accumulation_steps (the Trainer accumulates before aggregation and clipping)."
        )
    is_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if mixed_precision == "mixed_float16" and not is_scaled:
        with strategy.scope():
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def call_arguments(fn: Callable) -> bool:
    """Whether ``fn`` accepts a ``training`` keyword argument."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "training" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_positive(value: Any, name: str, kind: type = int, allow_none: bool = False) -> Any:
    """Return ``value`` if it is a positive number (or None when allowed); else ValueError."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or value <= 0:
        raise ValueError(f"Trainer `{name}` must be a positive {kind.__name__}, got {value!r}.")
    return value


def check_step_arguments(
    model: Any,
    models: Any,
    loss_fn: Any,
    step: Any,
    metrics: Any,
    accumulate_steps: int,
    jit_compile: bool,
    optimizers: Any,
) -> None:
    """Check how the Trainer was asked to train: ``model``/``models``, ``loss_fn``/``step``.

    Raises:
        TypeError: If both or neither of ``model``/``models`` (or ``loss_fn``/``step``) are
            given, or ``step`` / ``models`` are of the wrong kind.
        ValueError: For options a custom step does not support.
    """
    if (model is None) == (models is None):
        raise TypeError(
            "Trainer needs either `model` (one model) or `models` (a dict of named models), "
            f"but received {'both' if model is not None else 'neither'}. Pass e.g. "
            "Trainer(build_model, loss_fn) or Trainer(models={'generator': g, 'critic': c}, "
            "step=...)."
        )
    if models is not None and (
        not isinstance(models, dict) or not models or not all(isinstance(k, str) for k in models)
    ):
        raise TypeError(
            "Trainer `models` must be a non-empty dict {name: model or factory} with str "
            f"names, but received {describe_received(models)}."
        )
    if step is None and loss_fn is None:
        raise TypeError(
            "Trainer needs `loss_fn(model, batch)` (the default step) or `step(ctx, batch)` (a "
            "step you write); neither was given."
        )
    if step is None:
        if optimizers is not None:
            raise ValueError(
                "Trainer `optimizers` (several named optimizers) needs a custom `step` that "
                "calls ctx.minimize(name, ...); the loss_fn form trains one `optimizer`."
            )
        return
    if not callable(step):
        raise TypeError(f"Trainer `step` must be callable, got {describe_received(step)}.")
    if accumulate_steps != 1:
        raise ValueError(
            f"accumulate_steps={accumulate_steps} applies to the default loss_fn step only; in "
            "a custom step, sum the gradients of several ctx.gradients(...) calls yourself and "
            "pass them to ctx.apply(...)."
        )
    if jit_compile:
        raise ValueError(
            "jit_compile=True applies to the default loss_fn step only; in a custom step, "
            "XLA-compile your forward pass with tf.function(jit_compile=True) instead."
        )
    if metrics and loss_fn is None:
        raise ValueError(
            "Trainer `metrics` are computed by the loss_fn path (evaluate/validation); with a "
            "custom step pass loss_fn=... as well, or return the values from the step."
        )


def build_models(
    model: Any,
    models: dict[str, Any] | None,
    strategy: tf.distribute.Strategy,
    mixed_precision: str | None,
    seed: int | None,
) -> dict[str, Any]:
    """``{name: built model}``: ``{"model": model}`` for one model, else ``models`` built.

    With a ``seed`` and any factory among them, the global Keras/TF/NumPy seeds are set once
    before the first factory is called.

    Example:
        >>> sorted(build_models(None, {"a": tf.Variable(1.0)}, tf.distribute.get_strategy(),
        ...                     None, None))
        ['a']
    """
    named = {"model": model} if models is None else dict(models)
    if seed is not None and any(_is_factory(m) for m in named.values()):
        keras.utils.set_random_seed(seed)
    return {n: build_model(m, strategy, mixed_precision) for n, m in named.items()}


def _is_factory(obj: Any) -> bool:
    return callable(obj) and not (_is_model_object(obj) or _is_nest(obj))


def resolve_optimizers(
    optimizer: Any,
    optimizers: dict[str, Any] | None,
    models: dict[str, Any],
    strategy: tf.distribute.Strategy,
    mixed_precision: str | None,
) -> dict[str, keras.optimizers.Optimizer]:
    """One optimizer per trained model name, from ``optimizers`` or from ``optimizer``.

    Raises:
        ValueError: For an optimizer name that is no model's, or one optimizer object shared.
    """
    if optimizers is None:
        if len(models) > 1 and not isinstance(optimizer, str):
            raise ValueError(
                f"One optimizer object cannot train the {len(models)} models "
                f"({', '.join(models)}): its slots would mix. Pass optimizers={{name: ...}} or "
                "an optimizer name (e.g. optimizer='adam') to give each model its own."
            )
        optimizers = {n: optimizer for n in models}
    if not isinstance(optimizers, dict) or not optimizers:
        raise TypeError(
            "Trainer `optimizers` must be a non-empty dict {model name: optimizer}, but "
            f"received {describe_received(optimizers)}."
        )
    unknown = [n for n in optimizers if n not in models]
    if unknown:
        raise ValueError(
            f"Trainer `optimizers` names {unknown}, which are not among the models "
            f"{sorted(models)}; each optimizer trains the model of its name."
        )
    ids = [id(o) for o in optimizers.values() if not isinstance(o, str)]
    if len(set(ids)) != len(ids):
        raise ValueError(
            "Trainer `optimizers` uses one optimizer object for several models; create one "
            "optimizer per model (their slots and step counters must not mix)."
        )
    return {n: resolve_optimizer(o, strategy, mixed_precision) for n, o in optimizers.items()}
