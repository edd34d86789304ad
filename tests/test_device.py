"""The device shown to the user and the dtype policy networks are built in."""
import keras
import numpy as np
import pytest

from orangecontrib.deepimage import device


@pytest.fixture
def fake_gpus(monkeypatch):
    """Replace TensorFlow's device list with `gpus` (a list of dicts)."""
    real = device._gpu_details
    real.cache_clear()

    def install(gpus):
        monkeypatch.setattr(device, "_gpu_details", lambda: gpus)
    yield install
    real.cache_clear()


@pytest.fixture
def no_gpu():
    device._gpu_details.cache_clear()
    if device.gpu_names():
        pytest.skip("this test describes a machine without a GPU")


def test_cpu_only(no_gpu):
    assert device.gpu_names() == []
    assert device.device_description() == "CPU"
    assert device.preferred_dtype_policy() == "float32"


def test_gpu_with_tensor_cores(fake_gpus):
    fake_gpus([{"name": "NVIDIA A100", "compute_capability": (8, 0)}])
    assert device.gpu_names() == ["NVIDIA A100"]
    assert device.device_description() == "GPU: NVIDIA A100"
    assert device.preferred_dtype_policy() == "mixed_float16"


def test_older_or_unknown_gpu_keeps_float32(fake_gpus):
    fake_gpus([{"name": "Tesla K80", "compute_capability": (3, 7)},
               {"name": "mystery", "compute_capability": None}])
    assert device.device_description() == "GPU: Tesla K80 (+1 more)"
    assert device.preferred_dtype_policy() == "float32"


def _policies(network):
    return {layer.name: layer.dtype_policy.name
            for layer in device._all_layers(network)
            if not isinstance(layer, (keras.layers.InputLayer, keras.Model))}


def test_mixed_precision_is_set_per_layer_not_globally():
    from orangecontrib.deepimage.segmentation import build_unet
    before = keras.config.dtype_policy().name
    network = build_unet(3, depth=2, base_filters=4, dtype="mixed_float16")
    assert keras.config.dtype_policy().name == before
    policies = _policies(network)
    assert policies.pop("classes") == "float32"  # the output layer
    assert set(policies.values()) == {"mixed_float16"}
    assert network.get_layer("down0_conv1").compute_dtype == "float16"
    assert network.get_layer("down0_conv1").variable_dtype == "float32"
    # A network built next to it, without a policy, is float32.
    plain = build_unet(3, depth=2, base_filters=4)
    assert set(_policies(plain).values()) == {"float32"}
    out = network(np.zeros((1, 16, 16, 3), np.float32))
    assert out.dtype == "float32" and out.shape == (1, 16, 16, 3)


def test_backbones_and_learners_carry_the_preferred_policy(monkeypatch):
    from orangecontrib.deepimage.backbones import get_backbone
    from orangecontrib.deepimage.segmentation import SegmentationLearner
    before = keras.config.dtype_policy().name
    network = get_backbone("squeezenet").build(dtype="mixed_float16")
    assert keras.config.dtype_policy().name == before
    assert set(_policies(network).values()) == {"mixed_float16"}
    assert set(_policies(get_backbone("squeezenet").build()).values()) \
        == {"float32"}

    from orangecontrib.deepimage import segmentation
    monkeypatch.setattr(segmentation, "preferred_dtype_policy",
                        lambda: "mixed_float16")
    network, _ = SegmentationLearner(depth=2, base_filters=4,
                                     tile_size=16).build_network(2)
    assert keras.config.dtype_policy().name == before
    policies = _policies(network)
    assert policies.pop("classes") == "float32"
    assert set(policies.values()) == {"mixed_float16"}


def test_apply_dtype_policy_keeps_named_layers_float32():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="out")(
        keras.layers.Dense(3, name="hidden")(inputs))
    network = keras.Model(inputs, outputs)
    assert device.apply_dtype_policy(network, "mixed_float16",
                                     keep_float32=("out",)) is network
    assert _policies(network) == {"hidden": "mixed_float16",
                                  "out": "float32"}
    assert keras.config.dtype_policy().name == "float32"


def test_known_device_description_is_known_once_asked(no_gpu, monkeypatch):
    monkeypatch.setattr(device, "_described", [])
    assert device.known_device_description() is None
    assert device.device_description() == "CPU"
    assert device.known_device_description() == "CPU"


def test_distribution_strategy_is_the_default_without_two_gpus():
    import tensorflow as tf
    from orangecontrib.deepimage.device import distribution_strategy
    strategy = distribution_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
