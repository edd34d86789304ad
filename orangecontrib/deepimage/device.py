"""Which device TensorFlow computes on, and mixed precision on GPUs.

TensorFlow places operations on the first GPU by itself when there is one;
this module tells the user which device that is, picks the dtype policy
(``mixed_float16`` on GPUs with compute capability 7.0 or newer, i.e. with
tensor cores; ``float32`` elsewhere), and gives the distribution strategy
that training builds and compiles its models under: data-parallel over all
GPUs when there are two or more, TensorFlow's default strategy otherwise.
Training across machines uses ``MultiWorkerMirroredStrategy``, set up from
the ``TF_CONFIG`` variable of each machine (:func:`multi_worker_strategy`,
:func:`training_strategy`).

The policy is given to each layer that is built (the factories take a
``dtype`` argument, :func:`apply_dtype_policy` sets it on the layers of a
network that was built elsewhere); Keras' global policy is never changed,
so that two networks built at once in two threads cannot race on it.

Asking for the device imports TensorFlow (and initialises CUDA), so widgets
ask for it in their worker threads, not when they are created.
"""
import json
import os
from functools import lru_cache
from typing import Collection, List, Optional

from orangecontrib.deepimage.errors import InvalidInput

__all__ = ["gpu_names", "device_description", "known_device_description",
           "preferred_dtype_policy", "apply_dtype_policy",
           "distribution_strategy", "multi_worker_strategy",
           "training_strategy", "is_multi_worker", "is_chief",
           "MULTI_WORKER", "DEVICE_NOT_DETECTED"]

#: What a widget shows for the device before its first task has run.
DEVICE_NOT_DETECTED = "Detected when work starts"

#: The `strategy` that learners take to train across machines (TF_CONFIG).
MULTI_WORKER = "multi-worker"

#: The last description :func:`device_description` gave.
_described: List[str] = []


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
        description = "CPU"
    else:
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
        description = f"GPU: {names[0]}{more}"
    _described[:] = [description]
    return description


def known_device_description() -> Optional[str]:
    """What :func:`device_description` said last, or None if it was not
    asked yet; this never imports TensorFlow (for the GUI thread)."""
    return _described[0] if _described else None


def preferred_dtype_policy() -> str:
    """``"mixed_float16"`` on a GPU with tensor cores, else ``"float32"``."""
    for gpu in _gpu_details():
        capability = gpu["compute_capability"]
        if capability is not None and tuple(capability) >= (7, 0):
            return "mixed_float16"
    return "float32"


def apply_dtype_policy(network, policy: str,
                       keep_float32: Collection[str] = ()):
    """Make the layers of `network` compute under the dtype `policy`.

    For networks built by factories that take no ``dtype`` (those of
    ``keras.applications``). Only the layers of this network (and of the
    models nested in it) change; Keras' global policy stays as it is.
    Their weights stay float32, as a mixed policy keeps them, so `policy`
    is ``"float32"`` or a ``"mixed_..."`` policy.

    Parameters
    ----------
    network : keras.Model
    policy : str
        A Keras dtype policy name; ``"float32"`` changes nothing.
    keep_float32 : collection of str
        Names of layers that stay float32 (e.g. the output layer).

    Returns
    -------
    keras.Model
        `network`, changed in place.
    """
    if policy == "float32":
        return network
    import keras
    for layer in _all_layers(network):
        if isinstance(layer, keras.layers.InputLayer) \
                or isinstance(layer, keras.Model):
            continue
        layer.dtype_policy = "float32" if layer.name in keep_float32 \
            else policy
    return network


def _all_layers(model):
    import keras
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


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


@lru_cache(maxsize=1)
def multi_worker_strategy():
    """``MultiWorkerMirroredStrategy`` over the machines in ``TF_CONFIG``.

    Every machine runs the same script with its own ``TF_CONFIG``, e.g.
    ``{"cluster": {"worker": ["host1:12345", "host2:12345"]},
    "task": {"type": "worker", "index": 0}}`` on the first machine and
    ``"index": 1`` on the second. The strategy is made once per process
    (TensorFlow allows no second one), and before anything else starts
    TensorFlow: its collective operations are configured at start-up.

    Raises
    ------
    InvalidInput
        When ``TF_CONFIG`` is missing or malformed, or TensorFlow had
        already started in this process.
    """
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise InvalidInput(
            "Training across machines needs TF_CONFIG: set it on each "
            "machine to the list of workers and that machine's index.")
    try:
        workers = json.loads(config)["cluster"]["worker"]
        json.loads(config)["task"]["index"]
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidInput(
            f"TF_CONFIG must give cluster.worker (a list of host:port) and "
            f"task.index. Received: TF_CONFIG={config!r}") from error
    if not isinstance(workers, list) or not workers:
        raise InvalidInput(f"TF_CONFIG lists no workers. Received: "
                           f"TF_CONFIG={config!r}")
    import tensorflow as tf
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise InvalidInput(
            "TensorFlow had started before training across machines was set "
            "up: call orangecontrib.deepimage.device.multi_worker_strategy() "
            "(or train with strategy='multi-worker') before anything else "
            "uses TensorFlow in this process.") from error


def training_strategy(strategy=None):
    """The strategy a learner trains under.

    Parameters
    ----------
    strategy : tf.distribute.Strategy or str, optional
        None for :func:`distribution_strategy` (this machine's GPUs),
        :data:`MULTI_WORKER` (``"multi-worker"``) for
        :func:`multi_worker_strategy`, or any ``tf.distribute`` strategy.
    """
    if strategy is None:
        return distribution_strategy()
    if isinstance(strategy, str):
        if strategy != MULTI_WORKER:
            raise InvalidInput(f"strategy must be a tf.distribute strategy, "
                               f"None or {MULTI_WORKER!r}. Received: "
                               f"strategy={strategy!r}")
        return multi_worker_strategy()
    return strategy


def is_multi_worker(strategy) -> bool:
    """True for a strategy whose replicas span more than one process."""
    import tensorflow as tf
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    jobs = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, ())) for job in ("chief", "worker")) > 1


def is_chief(strategy=None) -> bool:
    """True in the process that writes files: the only one without
    several workers, else the chief (the task of type ``chief``, or worker
    0 when there is none)."""
    if strategy is None or not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return task_type == "worker" and task_id == 0 \
        and "chief" not in resolver.cluster_spec().as_dict()
