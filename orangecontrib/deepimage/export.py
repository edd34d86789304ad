"""Export trained networks for deployment outside Orange.

Every format takes raw RGB pixels (0–255, float32) of shape
``(batch, height, width, 3)`` with the preprocessing inside the network, and
gives class probabilities (per image, or per pixel for segmentation). The class names and input size are written to a
JSON file beside the export (``<name>.json``; inside the folder for a
SavedModel). Nothing is ever overwritten: an existing target is an error,
also when it appears while the export is being written, and a failure or a
kill leaves no partial file under the target's name.
"""
import json
import os
import shutil
import tempfile

from orangecontrib.deepimage.errors import UnwritableFolder
from orangecontrib.deepimage.files import (
    TEMP_PREFIX, check_output_folder, place_new_file, unwritable,
    write_new_file)

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
        When the target or its metadata file already exists (also when
        one appears while the export is written: it is kept).
    UnwritableFolder
        When the folder is missing, read-only or full; nothing is left.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format. Received: "
                         f"format={export_format!r}; expected one of "
                         f"{EXPORT_FORMATS}")
    suffix = _SUFFIXES[export_format]
    if suffix and not path.endswith(suffix):
        path += suffix
    metadata_path = _metadata_path(path, export_format)
    parent = os.path.dirname(os.path.abspath(path))
    check_output_folder(parent)
    for target in (path, metadata_path):
        if os.path.lexists(target):
            raise FileExistsError(f"Will not overwrite {target}")

    # Everything is written into a hidden folder beside the target; only
    # complete files get their names, each claimed so that it cannot
    # replace a file made meanwhile.
    metadata = json.dumps(_metadata(model, export_format),
                          indent=2).encode("utf-8")
    scratch = None
    try:
        scratch = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
        staged = os.path.join(scratch, os.path.basename(path))
        _WRITERS[export_format](model.network, staged)
        if export_format == "savedmodel":
            with open(_metadata_path(staged, export_format), "wb") as file:
                file.write(metadata)
            _rename_folder(staged, path)
        else:
            written_metadata = write_new_file(metadata_path, metadata,
                                              numbered=False)
            try:
                place_new_file(staged, path, numbered=False)
            except BaseException:
                os.remove(written_metadata)
                raise
    except OSError as error:
        mapped = None if isinstance(error, (UnwritableFolder,
                                            FileExistsError)) \
            else unwritable(error, parent)
        if mapped is not None:
            raise mapped from error
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return path


def _rename_folder(staged: str, path: str) -> None:
    """Move the complete folder `staged` to `path`, never over a file or
    a folder with something in it (an empty folder made meanwhile, which
    holds nothing, may be replaced where the system allows it)."""
    try:
        os.rename(staged, path)
    except OSError as error:
        if os.path.lexists(path) and not isinstance(error,
                                                    FileNotFoundError):
            raise FileExistsError(f"Will not overwrite {path}") from error
        raise


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
    flatbuffer = converter.convert()
    with open(path, "wb") as file:
        file.write(flatbuffer)


_WRITERS = {"keras": _write_keras, "savedmodel": _write_savedmodel,
            "tflite": _write_tflite}
