"""Small serialisable Keras layers the add-on's networks are built from."""
import keras
from keras import ops

__all__ = ["ResizeLike"]


@keras.saving.register_keras_serializable(package="deepimage")
class ResizeLike(keras.layers.Layer):
    """Resize the first input to the height and width of the second.

    A U-Net decoder joins maps of sizes that pretrained encoders do not
    always halve exactly (SqueezeNet's pooling gives 113 → 56 → 27 → 13).
    """

    def __init__(self, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        x, reference = inputs
        size = ops.shape(reference)[1:3]
        return ops.cast(ops.image.resize(x, size,
                                         interpolation=self.interpolation),
                        x.dtype)

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}
