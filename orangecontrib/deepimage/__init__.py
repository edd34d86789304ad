"""Orange3-DeepImage: deep learning on images, locally, in Orange.

Scripting entry points::

    from orangecontrib.deepimage import (
        ImageEmbedder, ImageClassifierLearner, SegmentationLearner,
        cluster_embeddings, grad_cam, measure_objects, edit_images,
        ObjectDetector, SegmentAnything, AnomalyLearner)

Names are imported on first use, so that importing the package (as Orange's
canvas does at start-up) does not load TensorFlow.
"""
import importlib

from orangecontrib.deepimage import tfloading

# Before anything imports TensorFlow: let it share the process with Orange's
# report and help windows (QtWebEngine) without crashing; see tfloading.
tfloading.install()

# Registers the reader that lets Orange's File widget open Parquet files
# (such as `deepimage embed`'s output); it imports pyarrow only to read.
from orangecontrib.deepimage import parquet  # noqa: E402,F401

_EXPORTS = {
    "ImageEmbedder": "orangecontrib.deepimage.embedding",
    "release_shared_embedders": "orangecontrib.deepimage.embedding",
    "ImageClassifierLearner": "orangecontrib.deepimage.classification",
    "ImageClassifierModel": "orangecontrib.deepimage.classification",
    "SegmentationLearner": "orangecontrib.deepimage.segmentation",
    "SegmentationModel": "orangecontrib.deepimage.segmentation",
    "cluster_embeddings": "orangecontrib.deepimage.clustering",
    "cluster_table": "orangecontrib.deepimage.clustering",
    "near_duplicates": "orangecontrib.deepimage.clustering",
    "name_clusters": "orangecontrib.deepimage.clustering",
    "grad_cam": "orangecontrib.deepimage.explain",
    "measure_objects": "orangecontrib.deepimage.measure",
    "pair_folders": "orangecontrib.deepimage.segdata",
    "edit_images": "orangecontrib.deepimage.edit",
    "ObjectDetector": "orangecontrib.deepimage.detection",
    "detections_to_masks": "orangecontrib.deepimage.detection",
    "DETECTORS": "orangecontrib.deepimage.detection",
    "SegmentAnything": "orangecontrib.deepimage.sam",
    "run_workflow": "orangecontrib.deepimage.workflow",
    "AnomalyLearner": "orangecontrib.deepimage.anomaly",
    "AnomalyModel": "orangecontrib.deepimage.anomaly",
    "AnnotationStore": "orangecontrib.deepimage.annotation",
    "scribble_segmenter": "orangecontrib.deepimage.annotation",
    "mask_from_box": "orangecontrib.deepimage.annotation",
    "superpixel_at": "orangecontrib.deepimage.annotation",
    "suggest_next": "orangecontrib.deepimage.annotation",
    "image_uncertainty": "orangecontrib.deepimage.annotation",
    "BACKBONES": "orangecontrib.deepimage.backbones",
    "get_backbone": "orangecontrib.deepimage.backbones",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
