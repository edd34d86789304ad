"""The tools of Annotate Images that compute a region for the user.

:class:`AssistedToolsMixin` handles the view's boxes and clicks for the
box (GrabCut or a threshold), superpixel and Segment Anything tools, and
the scribbles whose segmenter predicts the whole mask. Short computations
run in the widget's :class:`~.quicktasks.QuickTasks` lane; loading Segment
Anything's weights (a download the first time) is the widget's own task,
with progress and Cancel. A found region is painted with the current class
as one undoable edit.

The widget calls ``_init_tools_state`` (which makes ``sam``,
``sam_task``, ``waiting_prompt``, ``resume_assistance``, ``segments`` and
``segmenter``) and has the settings ``tool`` and ``sam_preset``; the
attributes ``image``, ``current``, ``paths``, ``class_names``, ``view``,
``quick``, ``task``, ``scribbles``, ``pending_scribbles``,
``scribble_timer`` and ``save_timer``; the messages
``Error.failed`` and ``Information.scribble_more``; and the methods
``start`` (of ``ConcurrentWidgetMixin``), ``assist`` and
``_class_index``.
"""
from typing import Optional, Tuple

import numpy as np

from orangecontrib.deepimage.annotation import superpixel_at
from orangecontrib.deepimage.sam import SegmentAnything
from orangecontrib.deepimage.widgets.utils.annotationtasks import (
    run_box, run_load_sam, run_prompt, run_scribbles, run_superpixels)

__all__ = ["AssistedToolsMixin"]


class AssistedToolsMixin:
    """Box, superpixel, Segment Anything and scribble tools of a widget."""

    def _init_tools_state(self):
        self.segmenter = None
        self.segments: Optional[Tuple[int, np.ndarray]] = None
        self.sam: Optional[SegmentAnything] = None
        self.waiting_prompt: Optional[Tuple[int, dict]] = None
        self.sam_task = None  # the task that loads its weights
        self.resume_assistance = False

    def _on_box(self, box):
        x0, y0, x1, y1 = box
        if self.image is None or x1 - x0 < 2 or y1 - y0 < 2:
            return
        if self.tool == "prompt":
            self._prompt(box=tuple(box))
            return
        self.quick.start(run_box, self.image, tuple(box),
                         done=self._paint_region, description="box")

    def _on_point(self, x: int, y: int):
        if self.image is None:
            return
        if self.tool == "prompt":
            self._prompt(point=(x, y))
            return
        if self.segments is not None and self.segments[0] == self.current:
            self._paint_region(superpixel_at(None, x, y,
                                             segments=self.segments[1]))
            return
        row = self.current

        def done(segments):
            self.segments = (row, segments)
            if self.current == row:
                self._paint_region(superpixel_at(None, x, y,
                                                 segments=segments))
        self.quick.start(run_superpixels, self.image, done=done,
                         description="superpixels")

    def _paint_region(self, region: np.ndarray):
        """The current class into `region` (a box's or superpixel's
        object), as one undoable edit."""
        if self.image is None or region.shape != self.image.shape[:2]:
            return
        mask = np.full(region.shape, self._class_index(), np.uint8)
        text = {"box": "Box", "prompt": "Segment Anything"}.get(
            self.tool, "Superpixel")
        self.view.apply_mask(mask, text, region=region)

    def _on_sam_preset(self):
        self.sam = None
        self.waiting_prompt = None

    def _prompt(self, **prompt):
        """A Segment Anything mask for a click or a box (`point` or `box`
        in image pixels); its weights are loaded first, as the widget's
        task (a download the first time: progress and Cancel)."""
        self.Error.failed.clear()
        if self.sam is None:
            self.sam = SegmentAnything(preset_path=self.sam_preset or None)
        if self.sam.model is None:
            self.waiting_prompt = (self.current, prompt)
            if self.task is None or self.task is not self.sam_task:
                # (the model's predictions go on once the weights are in)
                self.resume_assistance = self.task is not None
                self.start(run_load_sam, self.sam)
                self.sam_task = self.task
            return
        self.quick.start(run_prompt, self.sam, self.image,
                         done=self._paint_region,
                         description="Segment Anything", **prompt)

    def _on_sam_loaded(self):
        waiting, self.waiting_prompt = self.waiting_prompt, None
        if waiting is not None and waiting[0] == self.current:
            self._prompt(**waiting[1])
        if self.resume_assistance:
            self.assist()

    def _on_scribbles_changed(self):
        if self.current is None:
            return
        scribbles = self.view.scribbles()
        if scribbles.any():
            self.scribbles[self.current] = scribbles
        else:
            self.scribbles.pop(self.current, None)
        self.pending_scribbles[self.current] = scribbles
        self.segmenter = None
        self.scribble_timer.start()
        self.save_timer.start()

    def _fit_scribbles(self):
        rows = [row for row in self.scribbles if self.paths[row]]
        classes = set()
        for row in rows:
            classes.update(np.unique(self.scribbles[row]).tolist())
        classes.discard(0)
        self.Information.scribble_more(shown=len(classes) < 2 and bool(rows))
        if len(classes) < 2 or self.image is None:
            self.view.set_preview(None)
            return
        images = [self.image if row == self.current else self.paths[row]
                  for row in rows]
        self.quick.start(run_scribbles, images,
                         [self.scribbles[row] for row in rows], self.image,
                         None, done=self._on_scribble_preview,
                         description="scribbles", replace=True)

    def _on_scribble_preview(self, result):
        self.segmenter, mask = result
        if self.image is not None and mask.shape == self.image.shape[:2]:
            self.view.set_preview(np.minimum(mask, len(self.class_names) - 1)
                                  .astype(np.uint8))
