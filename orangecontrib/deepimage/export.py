"""Export trained networks for deployment outside Orange.

Every format takes raw RGB pixels (0–255, float32) of shape
``(batch, height, width, 3)`` with the preprocessing inside the network, and
gives class probabilities (per image, or per pixel for segmentation). The class names and input size are written to a
JSON file beside the export (``<name>.json``; inside the folder for a
SavedModel). Nothing is ever overwritten: an existing target is an error.
"""
import json
import os
import shutil
import tempfile

__all__ = ["export_model", "EXPORT_FORMATS", "load_export_metadata"]

EXPORT_FORMATS = ("keras", "savedmodel", "tflite")
_SUFFIXES = {"keras": ".keras", "tflite": ".tflite", "savedmodel": ""}


def _metadata(model, export_format):
    height, width = model.input_size
    return {"format": export_format, "backbone": model.backbone,
            "class_names": list(model.class_names),
            "input": {"height": height, "width": width, "channels": 3,
                      "dtype": "float32", "range": [0, 255],
                      "color": "RGB"},
            "output": model.export_output_description}


def _metadata_path(path, export_format):
    if export_format == "savedmodel":
        return os.path.join(path, "classes.json")
    return os.path.splitext(path)[0] + ".json"


def load_export_metadata(path: str, export_format: str) -> dict:
    """Read the class names and input description written beside `path`."""
    with open(_metadata_path(path, export_format), encoding="utf-8") as file:
        return json.load(file)


def export_model(model, path: str, export_format: str = "keras") -> str:
    """Write `model`'s network as a Keras file, a SavedModel or TFLite.

    Parameters
    ----------
    model : ImageClassifierModel or SegmentationModel
        Anything with ``network``, ``input_size``, ``class_names``,
        ``backbone`` and ``export_output_description``.
    path : str
        Target file (``.keras``, ``.tflite``) or folder (SavedModel); the
        suffix is added when missing.
    export_format : str
        ``"keras"``, ``"savedmodel"`` or ``"tflite"``.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        For an unknown format.
    FileExistsError
        When the target or its metadata file already exists.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format. Received: "
                         f"format={export_format!r}; expected one of "
                         f"{EXPORT_FORMATS}")
    suffix = _SUFFIXES[export_format]
    if suffix and not path.endswith(suffix):
        path += suffix
    metadata_path = _metadata_path(path, export_format)
    for target in (path, metadata_path):
        if os.path.exists(target):
            raise FileExistsError(f"Will not overwrite {target}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The folder {parent} does not exist")

    # Write into a temporary folder beside the target, then move into
    # place: a failure leaves nothing half-written.
    with tempfile.TemporaryDirectory(dir=parent) as scratch:
        staged = os.path.join(scratch, os.path.basename(path))
        _WRITERS[export_format](model.network, staged)
        staged_metadata = _metadata_path(staged, export_format)
        with open(staged_metadata, "w", encoding="utf-8") as file:
            json.dump(_metadata(model, export_format), file, indent=2)
        if export_format != "savedmodel":
            shutil.move(staged_metadata, metadata_path)
        shutil.move(staged, path)
    return path


def _write_keras(network, path):
    network.save(path)


def _serving_function(network):
    import tensorflow as tf
    height, width, _ = network.input_shape[1:]

    @tf.function(input_signature=[
        tf.TensorSpec((None, height, width, 3), tf.float32, name="pixels")])
    def serve(pixels):
        return {"probabilities": tf.cast(network(pixels, training=False),
                                         tf.float32)}
    return serve


def _write_savedmodel(network, path):
    import tensorflow as tf
    module = tf.Module()
    module.network = network
    module.serve = _serving_function(network)
    tf.saved_model.save(module, path,
                        signatures={"serving_default": module.serve})


def _write_tflite(network, path):
    import tensorflow as tf
    # Converting the Keras model directly; converting the serving function
    # or the SavedModel gave NaN outputs (TF 2.21).
    converter = tf.lite.TFLiteConverter.from_keras_model(network)
    with open(path, "wb") as file:
        file.write(converter.convert())


_WRITERS = {"keras": _write_keras, "savedmodel": _write_savedmodel,
            "tflite": _write_tflite}
