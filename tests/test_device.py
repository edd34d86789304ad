"""The device shown to the user and the dtype policy networks are built in."""
import keras
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


def test_dtype_policy_restores_previous_policy():
    before = keras.config.dtype_policy().name
    with device.dtype_policy("mixed_float16"):
        assert keras.config.dtype_policy().name == "mixed_float16"
        assert keras.layers.Dense(2).compute_dtype == "float16"
    assert keras.config.dtype_policy().name == before
    with pytest.raises(KeyError):
        with device.dtype_policy("mixed_bfloat16"):
            raise KeyError("fails inside")
    assert keras.config.dtype_policy().name == before


def test_distribution_strategy_is_the_default_without_two_gpus():
    import tensorflow as tf
    from orangecontrib.deepimage.device import distribution_strategy
    strategy = distribution_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
