"""Signal summaries (the text on a link and in a widget's status bar) for
the add-on's own signal types. Importing this module registers them."""
from orangewidget.utils.signals import PartialSummary, summarize

from orangecontrib.deepimage.segmentation import (
    SegmentationLearner, SegmentationModel)

__all__ = []

_NETWORKS = {"unet": "U-Net", "resunet": "ResUNet"}


def _network(architecture, encoder) -> str:
    if encoder:
        return f"U-Net ({encoder} encoder)"
    return _NETWORKS.get(architecture, str(architecture))


@summarize.register
def _summarize_learner(learner: SegmentationLearner):
    network = _network(learner.architecture, learner.encoder)
    return PartialSummary(network, f"{network} learner, {learner.epochs} "
                                   f"epochs")


@summarize.register
def _summarize_model(model: SegmentationModel):
    network = _network(model.architecture, model.encoder)
    classes = ", ".join(model.class_names)
    return PartialSummary(network, f"{network}; classes: {classes}; "
                                   f"tiles of {model.tile_size} px")
