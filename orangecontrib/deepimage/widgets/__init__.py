"""
Deep Image
==========

Widgets for deep learning on images: embeddings from pretrained networks,
image classification and segmentation.
"""
import sysconfig

NAME = "Deep Image"
DESCRIPTION = "Deep learning on images: embeddings, classification, segmentation."
BACKGROUND = "#C0E4F5"
ICON = "icons/Category-DeepImage.svg"
PRIORITY = 1100

# Tried in order; the first local file that exists (or the URL) is used.
# Placeholders are filled in by orangecanvas.help.manager.
WIDGET_HELP_PATH = (
    # Development (pip install -e .): a Sphinx build of doc/, if one was made.
    ("{DEVELOP_ROOT}/doc/_build/html/index.html", None),
    # Documentation installed with a wheel that was built with the docs.
    ("{}/help/orange3-deepimage/index.html".format(sysconfig.get_path("data")),
     None),
    # Development, no build needed: a hand-written index that links each
    # widget name to its page in doc/widgets/.
    ("{DEVELOP_ROOT}/doc/index.html", None),
)
