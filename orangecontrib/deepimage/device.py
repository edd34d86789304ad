"""Which device TensorFlow computes on, and mixed precision on GPUs.

TensorFlow places operations on the first GPU by itself when there is one;
this module tells the user which device that is, picks the dtype policy
(``mixed_float16`` on GPUs with compute capability 7.0 or newer, i.e. with
tensor cores; ``float32`` elsewhere), and gives the distribution strategy
that training builds and compiles its models under: data-parallel over all
GPUs when there are two or more, TensorFlow's default strategy otherwise.
"""
import contextlib
from functools import lru_cache
from typing import List

__all__ = ["gpu_names", "device_description", "preferred_dtype_policy",
           "dtype_policy", "distribution_strategy"]


@lru_cache(maxsize=1)
def _gpu_details() -> List[dict]:
    import tensorflow as tf
    details = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            info = tf.config.experimental.get_device_details(gpu)
        except (ValueError, RuntimeError):
            info = {}
        details.append({"name": info.get("device_name", gpu.name),
                        "compute_capability": info.get("compute_capability")})
    return details


def gpu_names() -> List[str]:
    """Return the names of the GPUs TensorFlow can use (empty on CPU)."""
    return [gpu["name"] for gpu in _gpu_details()]


def device_description() -> str:
    """Return a short description of the device in use, for the user."""
    names = gpu_names()
    if not names:
        return "CPU"
    more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
    return f"GPU: {names[0]}{more}"


def preferred_dtype_policy() -> str:
    """``"mixed_float16"`` on a GPU with tensor cores, else ``"float32"``."""
    for gpu in _gpu_details():
        capability = gpu["compute_capability"]
        if capability is not None and tuple(capability) >= (7, 0):
            return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def dtype_policy(name: str):
    """Build Keras layers under the dtype policy `name`, then restore it."""
    import keras
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@lru_cache(maxsize=1)
def distribution_strategy():
    """``MirroredStrategy`` over all GPUs when there are two or more.

    Otherwise TensorFlow's default strategy, whose ``scope()`` changes
    nothing. Models that train must be built and compiled in its scope.
    """
    import tensorflow as tf
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()
