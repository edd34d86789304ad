"""The painting canvas of Annotate Images, driven by real mouse and key
events on its viewport (aimed with map_from_image).

Under Qt 6 offscreen, QTest.mouseMove after QTest.mousePress carries the
held button, so drags are plain QTest calls; the canvas does not rely on
the move's button state anyway (a press starts a gesture, a release ends
it).
"""
import cv2
import numpy as np
from skimage.segmentation import flood

from AnyQt.QtCore import QPoint, QPointF, Qt
from AnyQt.QtGui import QAction, QKeySequence, QUndoStack, QWheelEvent
from AnyQt.QtTest import QSignalSpy, QTest
from AnyQt.QtWidgets import QApplication, QMainWindow

from orangewidget.tests.base import GuiTest

from orangecontrib.deepimage.widgets.utils.annotationview import (
    TOOLS, AnnotationView)

LEFT, RIGHT, MIDDLE = (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton,
                       Qt.MouseButton.MiddleButton)
CTRL, SHIFT = Qt.KeyboardModifier.ControlModifier, \
    Qt.KeyboardModifier.ShiftModifier
WIDTH, HEIGHT = 120, 90
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]


def photo(seed=0, width=WIDTH, height=HEIGHT):
    return np.random.default_rng(seed).integers(
        0, 256, (height, width, 3), dtype=np.uint8)


def stroke_mask(points, value, size, mask=None):
    """What a stroke through `points` paints: cv2.line of the brush's
    thickness for the press point and for each segment."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8) if mask is None else mask
    cv2.line(mask, points[0], points[0], value, thickness=size)
    for a, b in zip(points, points[1:]):
        cv2.line(mask, a, b, value, thickness=size)
    return mask


class TestAnnotationView(GuiTest):
    def setUp(self):
        self.view = AnnotationView()
        self.view.resize(400, 300)
        self.view.show()
        QTest.qWaitForWindowExposed(self.view)
        self.view.set_palette(PALETTE)
        self.view.set_image(photo())
        self.view.set_zoom(1)

    def tearDown(self):
        self.view.close()
        self.view.deleteLater()
        QApplication.processEvents()

    # ---- helpers: real events on the viewport ---------------------------
    def at(self, point):
        return self.view.map_from_image(*point)

    def drag(self, points, button=LEFT):
        viewport = self.view.viewport()
        QTest.mousePress(viewport, button, pos=self.at(points[0]))
        for point in points[1:]:
            QTest.mouseMove(viewport, self.at(point))
        QTest.mouseRelease(viewport, button, pos=self.at(points[-1]))

    def click(self, point, button=LEFT):
        QTest.mouseClick(self.view.viewport(), button, pos=self.at(point))

    def key(self, key, modifiers=Qt.KeyboardModifier.NoModifier):
        QTest.keyClick(self.view, key, modifiers)

    def aimed(self, points):
        """The test aims where it means to (at 0.5x a viewport pixel holds
        two image pixels and reaches only the odd ones)."""
        for point in points:
            self.assertEqual(self.view.map_to_image(self.at(point)), point)

    # ---- tools ----------------------------------------------------------
    def test_brush_paints_cv2_line_pixels_at_each_zoom(self):
        view = self.view
        view.set_tool("brush")
        view.set_current_class(2)
        for zoom, size, points in (
                (1, 5, [(20, 20), (60, 35), (61, 70), (100, 10)]),
                (2, 6, [(10, 8), (50, 30), (51, 70), (110, 85)]),
                (2, 1, [(5, 60), (40, 61), (90, 20)]),
                (0.5, 7, [(21, 21), (61, 35), (63, 71), (111, 13)])):
            with self.subTest(zoom=zoom, size=size):
                view.set_image(photo())
                view.set_zoom(zoom)
                self.assertAlmostEqual(view.zoom(), zoom)
                view.set_brush_size(size)
                self.aimed(points)
                self.drag(points)
                expected = stroke_mask(points, 2, size)
                np.testing.assert_array_equal(view.mask(), expected)
                self.assertEqual(view.undo_stack().count(), 1)
                self.assert_overlay_current()
                view.undo_stack().undo()
                np.testing.assert_array_equal(view.mask(), 0)
                self.assert_overlay_current()

    def assert_overlay_current(self):
        """The overlay's pixels, refreshed only where edits changed the
        mask, are the colours of the whole mask."""
        layer = self.view._layers["mask"]   # pylint: disable=protected-access
        np.testing.assert_array_equal(layer._pixels, layer.table[layer.labels])

    def test_brush_stroke_leaving_the_image_is_clipped(self):
        self.view.set_brush_size(9)
        points = [(100, 40), (130, 45), (125, -6)]   # beyond the edges
        self.aimed(points)
        self.drag(points)
        np.testing.assert_array_equal(self.view.mask(),
                                      stroke_mask(points, 1, 9))
        self.view.undo_stack().undo()
        np.testing.assert_array_equal(self.view.mask(), 0)

    def test_eraser_clears_exactly_its_stroke(self):
        start = np.zeros((HEIGHT, WIDTH), np.uint8)
        start[10:80, 10:110] = 3
        self.view.set_image(photo(), start)
        self.view.set_tool("eraser")
        self.view.set_brush_size(4)
        points = [(5, 40), (60, 45), (115, 44)]
        self.drag(points)
        expected = stroke_mask(points, 0, 4, start.copy())
        np.testing.assert_array_equal(self.view.mask(), expected)
        self.assertTrue((self.view.mask() != start).any())
        # the right button erases with the brush too
        self.view.set_tool("brush")
        self.drag([(30, 20), (30, 70)], RIGHT)
        expected = stroke_mask([(30, 20), (30, 70)], 0, 4, expected)
        np.testing.assert_array_equal(self.view.mask(), expected)

    def test_polygon_fills_cv2_fillpoly_pixels(self):
        view = self.view
        view.set_tool("polygon")
        view.set_current_class(1)
        vertices = [(10, 10), (100, 20), (90, 80), (30, 60)]
        for vertex in vertices[:-1]:
            self.click(vertex)
        self.click((70, 5))            # a vertex, then taken back
        self.click((70, 5), RIGHT)
        np.testing.assert_array_equal(view.mask(), 0)   # still open
        QTest.mouseDClick(view.viewport(), LEFT, pos=self.at(vertices[-1]))
        expected = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.fillPoly(expected, [np.array(vertices, np.int32)], 1)
        np.testing.assert_array_equal(view.mask(), expected)
        # Enter closes, Escape cancels
        view.set_current_class(3)
        triangle = [(5, 85), (20, 70), (35, 85)]
        for vertex in triangle:
            self.click(vertex)
        self.key(Qt.Key.Key_Return)
        cv2.fillPoly(expected, [np.array(triangle, np.int32)], 3)
        np.testing.assert_array_equal(view.mask(), expected)
        for vertex in [(60, 60), (80, 60), (70, 85)]:
            self.click(vertex)
        self.key(Qt.Key.Key_Escape)
        QTest.mouseDClick(view.viewport(), LEFT, pos=self.at((60, 80)))
        np.testing.assert_array_equal(view.mask(), expected)
        self.assertEqual(view.undo_stack().count(), 2)
        # Backspace takes back the last vertex; a vertex outside the image
        # moves to its edge
        view.set_current_class(2)
        for vertex in [(100, 50), (130, 60), (100, 70), (60, 88)]:
            self.click(vertex)
        self.key(Qt.Key.Key_Backspace)
        self.key(Qt.Key.Key_Enter)
        cv2.fillPoly(expected, [np.array([(100, 50), (119, 60), (100, 70)],
                                         np.int32)], 2)
        np.testing.assert_array_equal(view.mask(), expected)

    def test_fill_floods_only_the_connected_region(self):
        start = np.zeros((HEIGHT, WIDTH), np.uint8)
        start[10:40, 10:40] = 1
        start[40:60, 40:60] = 1     # touches the first only at a corner
        start[20:30, 20:30] = 2     # a hole of another class
        start[70:80, 5:15] = 1      # another region of the same class
        self.view.set_image(photo(), start)
        self.view.set_tool("fill")
        self.view.set_current_class(3)
        self.click((12, 12))
        expected = start.copy()
        expected[flood(start, (12, 12), connectivity=1)] = 3
        np.testing.assert_array_equal(self.view.mask(), expected)
        self.assertEqual((self.view.mask() == 3).sum(), 30 * 30 - 100)
        self.click((150, 12))       # outside the image: nothing
        self.assertEqual(self.view.undo_stack().count(), 1)

    def test_box_emits_image_pixel_box(self):
        spy = QSignalSpy(self.view.boxDrawn)
        self.view.set_tool("box")
        self.drag([(10, 12), (25, 20), (40, 30)])
        self.drag([(40, 30), (10, 12)])
        self.click((50, 50))        # a click is no box
        self.drag([(100, 80), (150, 120)])   # clipped to the image
        self.assertEqual([tuple(args) for args in spy],
                         [((10, 12, 41, 31),), ((10, 12, 41, 31),),
                          ((100, 80, WIDTH, HEIGHT),)])
        np.testing.assert_array_equal(self.view.mask(), 0)

    def test_prompt_tool_reports_boxes_and_clicks(self):
        boxes = QSignalSpy(self.view.boxDrawn)
        points = QSignalSpy(self.view.pointClicked)
        self.view.set_tool("prompt")
        self.drag([(10, 12), (25, 20), (40, 30)])
        self.click((50, 50))
        self.click((-3, 44))        # outside the image: nothing
        self.assertEqual([tuple(args) for args in boxes],
                         [((10, 12, 41, 31),)])
        self.assertEqual([tuple(args) for args in points], [(50, 50)])
        np.testing.assert_array_equal(self.view.mask(), 0)

    def test_superpixel_click_emits_pixel(self):
        self.view.set_zoom(2)
        spy = QSignalSpy(self.view.pointClicked)
        self.view.set_tool("superpixel")
        self.click((33, 44))
        self.click((-3, 44))        # outside the image
        self.assertEqual([list(args) for args in spy], [[33, 44]])

    def test_scribbles_store_class_plus_one(self):
        view = self.view
        mask_spy, scribble_spy = QSignalSpy(view.maskChanged), \
            QSignalSpy(view.scribblesChanged)
        view.set_tool("scribble")
        view.set_brush_size(3)
        view.set_current_class(0)
        self.drag([(10, 10), (50, 10)])
        view.set_current_class(2)
        self.drag([(10, 50), (50, 50)])
        expected = stroke_mask([(10, 10), (50, 10)], 1, 3)
        stroke_mask([(10, 50), (50, 50)], 3, 3, expected)
        np.testing.assert_array_equal(view.scribbles(), expected)
        self.drag([(30, 0), (30, 60)], RIGHT)    # the right button erases
        stroke_mask([(30, 0), (30, 60)], 0, 3, expected)
        np.testing.assert_array_equal(view.scribbles(), expected)
        np.testing.assert_array_equal(view.mask(), 0)
        self.assertEqual((len(mask_spy), len(scribble_spy)), (0, 3))
        view.undo_stack().undo()
        self.assertEqual(len(scribble_spy), 4)
        self.assertEqual(view.scribbles()[0, 30], 0)
        self.assertEqual(view.scribbles()[10, 30], 1)

    # ---- undo, redo, outside edits --------------------------------------
    def test_undo_redo_byte_identical_after_mixed_edits(self):
        view = self.view
        history = [view.mask()]
        view.set_brush_size(7)
        view.set_current_class(1)
        self.drag([(10, 10), (80, 60), (100, 20)])
        history.append(view.mask())
        view.set_tool("polygon")
        view.set_current_class(2)
        for vertex in [(20, 50), (70, 30), (110, 85)]:
            self.click(vertex)
        self.key(Qt.Key.Key_Enter)
        history.append(view.mask())
        view.set_tool("fill")
        view.set_current_class(3)
        self.click((5, 85))
        history.append(view.mask())
        view.set_tool("eraser")
        self.drag([(0, 40), (119, 45)])
        history.append(view.mask())
        new = np.full((HEIGHT, WIDTH), 2, np.uint8)
        region = np.zeros((HEIGHT, WIDTH), bool)
        region[30:60, 50:90] = True
        view.apply_mask(new, "GrabCut", region)
        history.append(view.mask())
        self.assertEqual(view.undo_stack().count(), 5)
        for earlier, later in zip(history, history[1:]):
            self.assertFalse(np.array_equal(earlier, later))
        for expected in reversed(history[:-1]):
            self.key(Qt.Key.Key_Z, CTRL)
            self.assertEqual(view.mask().tobytes(), expected.tobytes())
        self.key(Qt.Key.Key_Z, CTRL)     # nothing more to undo
        self.assertEqual(view.mask().tobytes(), history[0].tobytes())
        for expected in history[1:4]:
            self.key(Qt.Key.Key_Z, CTRL | SHIFT)
            self.assertEqual(view.mask().tobytes(), expected.tobytes())
        self.key(Qt.Key.Key_Y, CTRL)
        self.assertEqual(view.mask().tobytes(), history[4].tobytes())
        view.undo_stack().redo()
        self.assertEqual(view.mask().tobytes(), history[5].tobytes())
        view.undo_stack().undo()
        view.undo_stack().undo()
        self.assertEqual(view.mask().tobytes(), history[3].tobytes())

    def test_focused_view_takes_undo_before_window_shortcuts(self):
        window = QMainWindow()
        view = AnnotationView()
        window.setCentralWidget(view)
        triggered = []
        action = QAction("Undo", window)
        action.setShortcut(QKeySequence.StandardKey.Undo)
        action.triggered.connect(lambda: triggered.append(True))
        window.addAction(action)
        window.resize(400, 300)
        window.show()
        QTest.qWaitForWindowExposed(window)
        window.activateWindow()
        view.setFocus()
        QApplication.processEvents()
        view.set_image(photo())
        QTest.mouseClick(view.viewport(), LEFT,
                         pos=view.map_from_image(10, 10))
        self.assertTrue(view.mask().any())
        QTest.keyClick(view, Qt.Key.Key_Z, CTRL)
        self.assertFalse(view.mask().any())
        self.assertEqual(triggered, [])
        view.clearFocus()
        QTest.keyClick(window, Qt.Key.Key_Z, CTRL)
        self.assertEqual(triggered, [True])
        window.close()
        window.deleteLater()

    def test_apply_mask_with_region(self):
        view = self.view
        start = np.zeros((HEIGHT, WIDTH), np.uint8)
        start[:, :60] = 1
        view.set_image(photo(), start)
        spy = QSignalSpy(view.maskChanged)
        new = np.full((HEIGHT, WIDTH), 2, np.uint8)
        region = np.zeros((HEIGHT, WIDTH), bool)
        region[20:40, 50:70] = True
        view.apply_mask(new, "Superpixel", region)
        expected = start.copy()
        expected[region] = 2
        np.testing.assert_array_equal(view.mask(), expected)
        self.assertEqual(view.undo_stack().undoText(), "Superpixel")
        view.apply_mask(new, region=region)    # no change: no edit
        self.assertEqual((view.undo_stack().count(), len(spy)), (1, 1))
        view.apply_mask(new)                   # everywhere
        np.testing.assert_array_equal(view.mask(), 2)
        view.undo_stack().undo()
        np.testing.assert_array_equal(view.mask(), expected)
        view.undo_stack().undo()
        np.testing.assert_array_equal(view.mask(), start)
        self.assertEqual(len(spy), 4)
        with self.assertRaises(ValueError):
            view.apply_mask(np.zeros((3, 3), np.uint8))

    def test_set_image_with_its_own_undo_stack_keeps_history(self):
        view = self.view
        stacks = {"a": QUndoStack(), "b": QUndoStack()}
        view.set_image(photo(0), undo_stack=stacks["a"])
        self.assertIs(view.undo_stack(), stacks["a"])
        view.set_zoom(1)
        self.drag([(10, 10), (50, 50)])
        saved_a = view.mask()
        view.set_image(photo(1), undo_stack=stacks["b"])
        view.set_zoom(1)
        np.testing.assert_array_equal(view.mask(), 0)
        self.drag([(60, 10), (60, 80)])
        saved_b = view.mask()
        stacks["a"].undo()     # not shown: leaves the shown mask alone
        stacks["a"].redo()
        np.testing.assert_array_equal(view.mask(), saved_b)
        view.set_image(photo(0), saved_a, undo_stack=stacks["a"])
        self.key(Qt.Key.Key_Z, CTRL)
        np.testing.assert_array_equal(view.mask(), 0)
        self.key(Qt.Key.Key_Z, CTRL | SHIFT)
        np.testing.assert_array_equal(view.mask(), saved_a)
        self.assertEqual(stacks["b"].count(), 1)
        view.set_image(photo(2))      # a private stack, empty
        self.assertNotIn(view.undo_stack(), stacks.values())
        self.assertEqual(view.undo_stack().count(), 0)

    def test_other_buttons_during_a_stroke(self):
        viewport = self.view.viewport()
        self.view.set_brush_size(3)
        QTest.mousePress(viewport, LEFT, pos=self.at((10, 10)))
        QTest.mouseMove(viewport, self.at((30, 10)))
        QTest.mousePress(viewport, RIGHT, pos=self.at((30, 10)))   # ignored
        QTest.mouseRelease(viewport, RIGHT, pos=self.at((30, 10)))
        QTest.mouseMove(viewport, self.at((30, 40)))                # drawn
        QTest.mouseRelease(viewport, LEFT, pos=self.at((30, 40)))
        expected = stroke_mask([(10, 10), (30, 10), (30, 40)], 1, 3)
        np.testing.assert_array_equal(self.view.mask(), expected)
        self.assertEqual(self.view.undo_stack().count(), 1)

    def test_mask_changed_once_per_completed_edit(self):
        view = self.view
        spy = QSignalSpy(view.maskChanged)
        viewport = view.viewport()
        QTest.mousePress(viewport, LEFT, pos=self.at((10, 10)))
        for x in range(12, 80, 3):
            QTest.mouseMove(viewport, self.at((x, 20)))
        self.assertEqual(len(spy), 0)          # not while drawing
        QTest.mouseRelease(viewport, LEFT, pos=self.at((80, 20)))
        self.assertEqual(len(spy), 1)
        view.set_tool("polygon")
        for vertex in [(10, 60), (50, 60), (30, 85)]:
            self.click(vertex)
        self.assertEqual(len(spy), 1)
        self.key(Qt.Key.Key_Return)
        self.assertEqual(len(spy), 2)
        view.set_tool("fill")
        view.set_current_class(2)
        self.click((100, 80))
        view.apply_mask(np.ones((HEIGHT, WIDTH), np.uint8))
        self.key(Qt.Key.Key_Z, CTRL)
        self.key(Qt.Key.Key_Z, CTRL | SHIFT)
        self.assertEqual(len(spy), 6)
        self.click((100, 80))       # a fill that changes nothing
        self.assertEqual(len(spy), 7)
        self.click((100, 80))
        self.assertEqual(len(spy), 7)

    # ---- what is drawn --------------------------------------------------
    def test_overlay_shows_edits_and_preview(self):
        view = self.view
        image = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
        view.set_image(image)
        view.set_zoom(2)
        view.set_opacity(1)
        view.set_brush_size(9)

        def colour(point):
            pixel = view.viewport().grab().toImage().pixelColor(
                self.at(point))
            return pixel.red(), pixel.green(), pixel.blue()

        self.assertEqual(colour((50, 40)), (200, 200, 200))
        self.drag([(40, 40), (60, 40)])
        self.assertEqual(colour((50, 40)), (255, 0, 0))
        self.assertEqual(colour((50, 20)), (200, 200, 200))
        view.set_palette([(0, 0, 0), (10, 20, 30)])
        self.assertEqual(colour((50, 40)), (10, 20, 30))
        self.key(Qt.Key.Key_Z, CTRL)
        self.assertEqual(colour((50, 40)), (200, 200, 200))
        preview = np.zeros((HEIGHT, WIDTH), np.uint8)
        preview[30:50, 30:50] = 1
        view.set_preview(preview)
        np.testing.assert_array_equal(view.preview(), preview)
        blended = colour((40, 40))
        self.assertNotEqual(blended, (200, 200, 200))
        self.assertEqual(colour((60, 60)), (200, 200, 200))
        np.testing.assert_array_equal(view.mask(), 0)
        view.set_preview(None)
        self.assertIsNone(view.preview())
        self.assertEqual(colour((40, 40)), (200, 200, 200))
        view.set_tool("scribble")
        self.drag([(20, 70), (30, 70)])
        self.assertEqual(colour((25, 70)), (10, 20, 30))

    def test_photo_colours(self):
        view = self.view
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        image[:, :60] = (10, 100, 200)
        image[:, 60:] = (250, 5, 60)
        for pixels, left, right in (
                (image, (10, 100, 200), (250, 5, 60)),
                (np.dstack([image, np.full((HEIGHT, WIDTH), 9, np.uint8)]),
                 (10, 100, 200), (250, 5, 60)),       # alpha is ignored
                (image[..., 0], (10, 10, 10), (250, 250, 250))):   # grey
            view.set_image(pixels)
            shown = view.viewport().grab().toImage()
            for point, colour in (((20, 40), left), ((100, 40), right)):
                pixel = shown.pixelColor(self.at(point))
                self.assertEqual((pixel.red(), pixel.green(), pixel.blue()),
                                 colour)

    # ---- zoom and pan ---------------------------------------------------
    def test_wheel_zooms_around_the_cursor_and_ctrl_0_fits(self):
        view = self.view
        view.set_zoom(4)    # larger than the viewport: the image scrolls
        spy = QSignalSpy(view.zoomChanged)
        target = (45, 35)
        pos = QPointF(self.at(target))
        event = QWheelEvent(pos, QPointF(view.viewport().mapToGlobal(pos)),
                            QPoint(), QPoint(0, 240),
                            Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier,
                            Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(view.viewport(), event)
        self.assertAlmostEqual(view.zoom(), 4 * 1.25 ** 2)
        self.assertEqual(view.map_to_image(pos.toPoint()), target)
        self.assertAlmostEqual(spy[-1][0], 4 * 1.25 ** 2)
        self.key(Qt.Key.Key_0, CTRL)
        self.assertAlmostEqual(view.zoom(), min(398 / WIDTH, 298 / HEIGHT),
                               delta=0.1)
        self.assertAlmostEqual(spy[-1][0], view.zoom())

    def test_pan_tool_middle_button_and_space_drag_scroll(self):
        view = self.view
        view.set_zoom(8)
        bar = view.horizontalScrollBar()
        for tool, button, space in (("pan", LEFT, False),
                                    ("brush", MIDDLE, False),
                                    ("brush", LEFT, True)):
            with self.subTest(tool=tool, button=button, space=space):
                view.set_tool(tool)
                bar.setValue(bar.maximum() // 2)
                before = bar.value()
                if space:
                    QTest.keyPress(view, Qt.Key.Key_Space)
                viewport = view.viewport()
                QTest.mousePress(viewport, button, pos=QPoint(200, 150))
                QTest.mouseMove(viewport, QPoint(150, 150))
                QTest.mouseRelease(viewport, button, pos=QPoint(150, 150))
                if space:
                    QTest.keyRelease(view, Qt.Key.Key_Space)
                self.assertEqual(bar.value(), before + 50)
        np.testing.assert_array_equal(view.mask(), 0)

    # ---- arguments ------------------------------------------------------
    def test_arguments_and_clearing(self):
        view = self.view
        self.assertEqual(view.tool(), "brush")
        for tool in TOOLS:
            view.set_tool(tool)
            self.assertEqual(view.tool(), tool)
        with self.assertRaises(ValueError):
            view.set_tool("lasso")
        with self.assertRaises(ValueError):
            view.set_image(photo(), np.zeros((3, 3), np.uint8))
        with self.assertRaises(ValueError):
            view.set_image(np.zeros((4, 4), np.float32))
        grey = np.full((HEIGHT, WIDTH), 7, np.uint8)
        scribbles = np.ones((HEIGHT, WIDTH), np.uint8)
        view.set_image(grey, scribbles=scribbles)
        np.testing.assert_array_equal(view.scribbles(), scribbles)
        copy = view.mask()
        copy[:] = 5
        np.testing.assert_array_equal(view.mask(), 0)
        view.set_image(None)
        self.assertEqual(view.mask().shape, (0, 0))
        self.click((5, 5))      # nothing to paint on: nothing happens
        self.assertEqual(view.undo_stack().count(), 0)
