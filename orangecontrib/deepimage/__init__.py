"""Orange3-DeepImage: deep learning on images, locally, in Orange.

Scripting entry points::

    from orangecontrib.deepimage import ImageEmbedder
"""
from orangecontrib.deepimage.embedding import ImageEmbedder
from orangecontrib.deepimage.backbones import BACKBONES, get_backbone

__all__ = ["ImageEmbedder", "BACKBONES", "get_backbone"]
