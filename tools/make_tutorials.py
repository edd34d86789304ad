"""Build the tutorial workflows (run once; the .ows files are committed).

Each workflow is put together from Orange's widget registry, run headless so
that widgets that need data to be set up (a folder, a selection) can be,
and saved with paths relative to the tutorials folder. Usage::

    python tools/make_tutorials.py [name ...]
"""
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

TUTORIALS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "orangecontrib", "deepimage", "tutorials")

IMPORT_IMAGES = "orangecontrib.imageanalytics.widgets.owimageimport.OWImportImages"
IMAGE_VIEWER = "orangecontrib.imageanalytics.widgets.owimageviewer.OWImageViewer"
OURS = "orangecontrib.deepimage.widgets."


@dataclass
class Tutorial:
    """A workflow: nodes (title → widget), links, and set-up steps."""
    name: str
    title: str
    description: str
    nodes: Dict[str, Tuple[str, Tuple[float, float]]]
    links: List[Tuple[str, str, str, str]]
    setup: Callable = None
    after_run: Callable = None
    extra: Dict = field(default_factory=dict)


def _import_folder(folder):
    def setup(widgets):
        widgets["Import Images"].setCurrentPath(os.path.join(TUTORIALS, folder))
    return setup


def _seg_folders(images, masks):
    def setup(widgets):
        widget = widgets["Segmentation Data"]
        widget.set_folders(os.path.join(TUTORIALS, images),
                           os.path.join(TUTORIALS, masks))
    return setup


def _select_misclassified(widgets):
    widgets["Confusion Matrix"].select_wrong()


def classifier():
    return Tutorial(
        "classify-digits", "Classify images with transfer learning",
        "Train an image classifier on labelled images (SqueezeNet, offline), "
        "cross-validate it, see which images it confuses and where it looked.",
        nodes={
            "Import Images": (IMPORT_IMAGES, (60, 200)),
            "Deep Embedding": (OURS + "owdeepembedding.OWDeepEmbedding",
                               (220, 200)),
            "Image Classifier": (OURS + "owimageclassifier.OWImageClassifier",
                                 (220, 60)),
            "Test and Score": ("Orange.widgets.evaluate.owtestandscore."
                               "OWTestAndScore", (400, 120)),
            "Confusion Matrix": ("Orange.widgets.evaluate.owconfusionmatrix."
                                 "OWConfusionMatrix", (560, 120)),
            "Explain Images": (OURS + "owexplainimages.OWExplainImages",
                               (720, 120)),
        },
        links=[
            ("Import Images", "Data", "Deep Embedding", "Images"),
            ("Deep Embedding", "Embeddings", "Image Classifier", "Data"),
            ("Deep Embedding", "Embeddings", "Test and Score", "Data"),
            ("Image Classifier", "Learner", "Test and Score", "Learner"),
            ("Test and Score", "Evaluation Results", "Confusion Matrix",
             "Evaluation Results"),
            ("Confusion Matrix", "Selected Data", "Explain Images", "Data"),
            ("Image Classifier", "Model", "Explain Images", "Model"),
        ],
        setup=_import_folder("digits"), after_run=_select_misclassified)


def _edit_settings(widgets):
    _seg_folders("edit/images", "edit/masks")(widgets)
    for title, operation, classes in (("Remove Towers", "remove", ["tower"]),
                                      ("Blur Flag", "blur", ["flag"])):
        widget = widgets[title]
        widget.operation = operation
        widget.selected_classes = classes
        widget.auto_commit = True


def edit():
    return Tutorial(
        "edit-images", "Remove and blur objects by their masks",
        "Pair photos with masks, remove the rocket's launch towers by "
        "inpainting and blur the flag on the astronaut's suit; compare the "
        "results with the originals.",
        nodes={
            "Segmentation Data": (OURS + "owsegmentationdata."
                                  "OWSegmentationData", (80, 150)),
            "Remove Towers": (OURS + "oweditimages.OWEditImages", (260, 80)),
            "Blur Flag": (OURS + "oweditimages.OWEditImages", (260, 220)),
            "Removed": (IMAGE_VIEWER, (440, 80)),
            "Blurred": (IMAGE_VIEWER, (440, 220)),
        },
        links=[("Segmentation Data", "Data", "Remove Towers", "Data"),
               ("Segmentation Data", "Data", "Blur Flag", "Data"),
               ("Remove Towers", "Edited Images", "Removed", "Data"),
               ("Blur Flag", "Edited Images", "Blurred", "Data")],
        setup=_edit_settings)


def _nuclei_settings(widgets):
    _seg_folders("nuclei/images", "nuclei/masks")(widgets)
    widgets["Segment Images"].split_touching = True  # nuclei touch


def segmentation():
    return Tutorial(
        "segment-nuclei", "Segment and count cell nuclei",
        "Train a U-Net on fluorescence images of nuclei with their masks, "
        "segment the images, compare with the ground truth and count the "
        "nuclei.",
        nodes={
            "Segmentation Data": (OURS + "owsegmentationdata."
                                  "OWSegmentationData", (60, 150)),
            "Segmentation Trainer": (OURS + "owsegmentationtrainer."
                                     "OWSegmentationTrainer", (220, 60)),
            "Segment Images": (OURS + "owsegmentimages.OWSegmentImages",
                               (380, 150)),
            "Segmentation Preview": (OURS + "owsegmentationpreview."
                                     "OWSegmentationPreview", (560, 100)),
            "Counts": ("Orange.widgets.data.owtable.OWTable", (560, 220)),
        },
        links=[
            ("Segmentation Data", "Data", "Segmentation Trainer", "Data"),
            ("Segmentation Data", "Data", "Segment Images", "Data"),
            ("Segmentation Trainer", "Model", "Segment Images", "Model"),
            ("Segment Images", "Images with Masks", "Segmentation Preview",
             "Data"),
            ("Segment Images", "Counts", "Counts", "Data"),
        ],
        setup=_nuclei_settings)


def photos():
    return Tutorial(
        "organise-photos", "Organise photos by what they show",
        "Embed photos with SqueezeNet, group them into clusters named by "
        "what the network sees, and look at each group.",
        nodes={
            "Import Images": (IMPORT_IMAGES, (60, 150)),
            "Deep Embedding": (OURS + "owdeepembedding.OWDeepEmbedding",
                               (220, 150)),
            "Image Clusters": (OURS + "owimageclusters.OWImageClusters",
                               (380, 150)),
            "Image Viewer": (IMAGE_VIEWER, (540, 150)),
        },
        links=[
            ("Import Images", "Data", "Deep Embedding", "Images"),
            ("Deep Embedding", "Embeddings", "Image Clusters", "Embeddings"),
            ("Image Clusters", "Data", "Image Viewer", "Data"),
        ],
        setup=_import_folder("photos"))


def _hide_faces_settings(widgets):
    _import_folder("photos")(widgets)
    widget = widgets["Pixelate Faces"]
    widget.operation = "pixelate"
    widget.auto_commit = True


def hide_faces():
    return Tutorial(
        "hide-faces", "Hide faces before publishing photos",
        "Find the faces in photos with OpenCV's face detector (offline, no "
        "training), pixelate them with Edit Images and look at the result "
        "before publishing: the classic detector finds the astronaut's "
        "face, misses the cameraman's face in profile and takes a head on "
        "a Greek coin for a face.",
        nodes={
            "Import Images": (IMPORT_IMAGES, (60, 150)),
            "Find Objects": (OURS + "owfindobjects.OWFindObjects",
                             (220, 150)),
            "Pixelate Faces": (OURS + "oweditimages.OWEditImages",
                               (380, 150)),
            "Published": (IMAGE_VIEWER, (540, 150)),
        },
        links=[
            ("Import Images", "Data", "Find Objects", "Data"),
            ("Find Objects", "Images with Masks", "Pixelate Faces", "Data"),
            ("Pixelate Faces", "Edited Images", "Published", "Data"),
        ],
        setup=_hide_faces_settings)


def _defect_folders(widgets):
    widgets["Good Parts"].setCurrentPath(
        os.path.join(TUTORIALS, "defects", "good"))
    widgets["Parts to Check"].setCurrentPath(
        os.path.join(TUTORIALS, "defects", "check"))


def defects():
    return Tutorial(
        "find-defects", "Find the defective parts",
        "Learn from photos of good parts only, flag the parts that look "
        "different and see where (PatchCore on SqueezeNet, offline).",
        nodes={
            "Good Parts": (IMPORT_IMAGES, (60, 80)),
            "Parts to Check": (IMPORT_IMAGES, (60, 220)),
            "Image Anomalies": (OURS + "owimageanomalies.OWImageAnomalies",
                                (240, 150)),
            "Anomalies": (IMAGE_VIEWER, (420, 80)),
            "Scores": ("Orange.widgets.data.owtable.OWTable", (420, 220)),
        },
        links=[
            ("Good Parts", "Data", "Image Anomalies", "Normal Images"),
            ("Parts to Check", "Data", "Image Anomalies", "Data"),
            ("Image Anomalies", "Anomalies", "Anomalies", "Data"),
            ("Image Anomalies", "Scored Data", "Scores", "Data"),
        ],
        setup=_defect_folders)


def _annotate_settings(widgets):
    widgets["Import Images"].setCurrentPath(
        os.path.join(TUTORIALS, "nuclei", "images"))
    widget = widgets["Annotate Images"]
    widget.set_store_folder(os.path.join(TUTORIALS, "annotate", "store"))
    widget.set_tool("scribble")
    widget.brush_size = 3  # the tiles are 128 pixels a side
    widget.select_class(1)
    widget.n_suggested = N_SUGGESTED
    trainer = widgets["Segmentation Trainer"]
    # the smallest settings that still learn the nuclei from six masks in
    # seconds: batches of two give three steps an epoch
    trainer.epochs, trainer.batch_size, trainer.learning_rate = 8, 2, 0.003
    trainer.settings_changed()
    widgets["Segment Images"].split_touching = True  # nuclei touch


#: Annotate Images' suggestions in the tutorial
N_SUGGESTED = 3


def annotate():
    return Tutorial(
        "annotate-nuclei", "Annotate nuclei, train, count",
        "Correct and add masks of cell nuclei in Annotate Images (its folder "
        "holds a few scribbles and six corrected masks), train a U-Net on "
        "them, segment all the images and count the nuclei.",
        nodes={
            "Import Images": (IMPORT_IMAGES, (60, 150)),
            "Annotate Images": (OURS + "owannotateimages.OWAnnotateImages",
                                (220, 60)),
            "Segmentation Trainer": (OURS + "owsegmentationtrainer."
                                     "OWSegmentationTrainer", (380, 60)),
            "Segment Images": (OURS + "owsegmentimages.OWSegmentImages",
                               (540, 150)),
            "Counts": ("Orange.widgets.data.owtable.OWTable", (700, 150)),
        },
        links=[
            ("Import Images", "Data", "Annotate Images", "Images"),
            ("Annotate Images", "Images with Masks", "Segmentation Trainer",
             "Data"),
            ("Import Images", "Data", "Segment Images", "Data"),
            ("Segmentation Trainer", "Model", "Segment Images", "Model"),
            ("Segment Images", "Counts", "Counts", "Data"),
        ],
        setup=_annotate_settings)


ALL = {"classify-digits": classifier, "edit-images": edit,
       "segment-nuclei": segmentation, "organise-photos": photos,
       "hide-faces": hide_faces, "find-defects": defects,
       "annotate-nuclei": annotate}


def build(tutorial: Tutorial) -> str:
    """Create, run and save one tutorial workflow; return its path."""
    from orangecanvas.scheme import SchemeLink, SchemeNode, readwrite
    from orangecanvas.scheme.widgetmanager import WidgetManager
    from orangewidget.workflow.widgetsscheme import WidgetsScheme
    from orangecontrib.deepimage import workflow

    registry = workflow._registry()  # pylint: disable=protected-access
    scheme = WidgetsScheme(title=tutorial.title,
                           description=tutorial.description,
                           env={"basedir": TUTORIALS})
    scheme.widget_manager.set_creation_policy(WidgetManager.Immediate)
    nodes = {}
    for title, (qualified_name, position) in tutorial.nodes.items():
        node = SchemeNode(registry.widget(qualified_name), title=title,
                          position=position)
        scheme.add_node(node)
        nodes[title] = node
    for source, output, sink, input_ in tutorial.links:
        scheme.add_link(SchemeLink(nodes[source], output, nodes[sink],
                                   input_))
    widgets = {title: scheme.widget_for_node(node)
               for title, node in nodes.items()}
    scheme.signal_manager.start()
    if tutorial.setup is not None:
        tutorial.setup(widgets)
    workflow._wait_until_idle(scheme, 1800)  # pylint: disable=protected-access
    if tutorial.after_run is not None:
        tutorial.after_run(widgets)
        workflow._wait_until_idle(scheme, 600)  # pylint: disable=protected-access
    for node in scheme.nodes:
        for message in node.state_messages():
            if message.contents and message.severity >= 2:
                print(f"  {node.title}: {message.contents}")
    scheme.sync_node_properties()
    path = os.path.join(TUTORIALS, f"{tutorial.name}.ows")
    with open(path, "wb") as stream:
        readwrite.scheme_to_ows_stream(scheme, stream, pretty=True,
                                        pickle_fallback=True)
    workflow._close(scheme)  # pylint: disable=protected-access
    return path


def main(names):
    from AnyQt.QtWidgets import QApplication
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication.instance() or QApplication(["make_tutorials"])
    for name in names or ALL:
        print(f"{name}: {build(ALL[name]())}")
    del app


if __name__ == "__main__":
    main(sys.argv[1:])
