"""The shared image views: thumbnails, gallery, group list, map and
silhouette plot."""
import os
import tempfile
import unittest

import numpy as np
from PIL import Image

from AnyQt.QtCore import QPoint, Qt
from AnyQt.QtGui import QColor, QPixmap
from AnyQt.QtTest import QSignalSpy, QTest

from Orange.data import DiscreteVariable, Domain, StringVariable, Table
from orangewidget.tests.base import GuiTest

from orangecontrib.deepimage.images import image_paths
from orangecontrib.deepimage.widgets.utils.embeddingmap import (
    ImageMap, colour_views, variable_colors)
from orangecontrib.deepimage.widgets.utils.gallery import (
    Group, GroupList, ThumbnailGallery, apply_selection)
from orangecontrib.deepimage.widgets.utils.silhouette import SilhouettePlot
from orangecontrib.deepimage.widgets.utils.thumbnails import (
    RowPaths, ThumbnailLoader)

#: The colours of the test images, one per row.
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (240, 220, 30),
           (200, 40, 200), (30, 200, 200), (120, 120, 120)]


def image_table(folder, names, discrete=False):
    if discrete:
        column = DiscreteVariable("image", values=tuple(sorted(set(names))))
        values = [column.values.index(name) for name in names]
    else:
        column = StringVariable("image")
        values = names
    column.attributes.update({"type": "image", "origin": folder})
    return Table.from_numpy(Domain([], metas=[column]),
                            np.empty((len(names), 0)),
                            metas=np.array(values, dtype=object)[:, None])


class TestRowPaths(unittest.TestCase):
    def test_same_paths_as_image_paths(self):
        folder = os.path.join("some", "folder")
        names = ["a.png", "", "sub/b.jpg", "http://example.com/c.png"]
        table = image_table(folder, names)
        column = table.domain["image"]
        expected = image_paths(table, column)
        self.assertEqual(list(RowPaths(table, column)), expected)
        self.assertEqual(expected[0], os.path.join(folder, "a.png"))
        self.assertIsNone(expected[1])
        self.assertEqual(expected[3], names[3])
        table = image_table(folder, ["b.png", "a.png", "b.png"],
                            discrete=True)
        column = table.domain["image"]
        self.assertEqual(list(RowPaths(table, column)),
                         [os.path.join(folder, name)
                          for name in ("b.png", "a.png", "b.png")])

    def test_without_a_column_every_row_is_none(self):
        table = image_table("", ["a.png", "b.png"])
        self.assertEqual(list(RowPaths(table)), [None, None])
        self.assertEqual(len(RowPaths()), 0)


class TestApplySelection(unittest.TestCase):
    def test_modes(self):
        selected = np.zeros(6, dtype=bool)
        apply_selection(selected, [1, 2], "replace")
        self.assertEqual(np.flatnonzero(selected).tolist(), [1, 2])
        apply_selection(selected, [4], "add")
        self.assertEqual(np.flatnonzero(selected).tolist(), [1, 2, 4])
        apply_selection(selected, [2], "toggle")
        self.assertEqual(np.flatnonzero(selected).tolist(), [1, 4])
        # several rows: all selected -> deselected, otherwise all selected
        apply_selection(selected, [0, 1], "toggle")
        self.assertEqual(np.flatnonzero(selected).tolist(), [0, 1, 4])
        apply_selection(selected, [0, 1], "toggle")
        self.assertEqual(np.flatnonzero(selected).tolist(), [4])
        apply_selection(selected, [], "replace")
        self.assertFalse(selected.any())
        with self.assertRaises(ValueError):
            apply_selection(selected, [1], "invert")


class ViewTest(GuiTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tempdir = tempfile.TemporaryDirectory()
        cls.paths = []
        for i, colour in enumerate(COLOURS):
            path = os.path.join(cls.tempdir.name, f"{i}.png")
            Image.new("RGB", (40, 30), colour).save(path)
            cls.paths.append(path)
        cls.paths.append(os.path.join(cls.tempdir.name, "missing.png"))

    @classmethod
    def tearDownClass(cls):
        cls.tempdir.cleanup()
        super().tearDownClass()

    def setUp(self):
        self.loader = ThumbnailLoader(size=32)
        self.loader.set_paths(self.paths)

    def tearDown(self):
        self.loader.shutdown()

    def wait_for_thumbnails(self, rows):
        for _ in range(250):
            if all(self.loader.is_loaded(row) for row in rows):
                return
            QTest.qWait(20)
        self.fail("thumbnails did not load")


class TestThumbnailGallery(ViewTest):
    def setUp(self):
        super().setUp()
        self.gallery = ThumbnailGallery(self.loader)
        self.gallery.resize(400, 300)
        self.gallery.show()
        self.selected = np.zeros(len(self.paths), dtype=bool)

        def on_request(rows, mode):
            apply_selection(self.selected, rows, mode)
            self.gallery.set_selection(self.selected)
        self.gallery.selectionRequested.connect(on_request)

    def tearDown(self):
        self.gallery.close()
        super().tearDown()

    def click(self, position, group=0,
              modifier=Qt.KeyboardModifier.NoModifier):
        QTest.mouseClick(self.gallery.viewport(), Qt.MouseButton.LeftButton,
                         modifier,
                         self.gallery._cell_rect(group, position).center())

    def test_shows_n_items_and_loads_their_thumbnails(self):
        self.gallery.set_rows(range(len(self.paths)))
        rows = self.gallery.visible_rows()
        self.assertEqual(rows, list(range(len(self.paths))))
        self.wait_for_thumbnails(rows)
        self.assertIs(self.loader.get(len(self.paths) - 1),
                      ThumbnailLoader.FAILED)
        pixmap = self.loader.get(0)
        self.assertEqual((pixmap.width(), pixmap.height()), (32, 24))
        # the cell of row 2 shows its colour
        picture = self.gallery.viewport().grab().toImage()
        centre = self.gallery._cell_rect(0, 2).center()
        colour = QColor(picture.pixel(centre))
        self.assertEqual((colour.red(), colour.green(), colour.blue()),
                         COLOURS[2])

    def test_clicks_select_rows(self):
        self.gallery.set_rows([3, 0, 5, 1])
        self.click(1)
        self.assertEqual(np.flatnonzero(self.selected).tolist(), [0])
        self.click(2, modifier=Qt.KeyboardModifier.ControlModifier)
        self.assertEqual(np.flatnonzero(self.selected).tolist(), [0, 5])
        self.click(1, modifier=Qt.KeyboardModifier.ControlModifier)
        self.assertEqual(np.flatnonzero(self.selected).tolist(), [5])
        # shift adds the range from the last clicked image
        self.click(0)
        self.click(3, modifier=Qt.KeyboardModifier.ShiftModifier)
        self.assertEqual(np.flatnonzero(self.selected).tolist(), [0, 1, 3, 5])
        # a click on no image clears the selection
        QTest.mouseClick(self.gallery.viewport(), Qt.MouseButton.LeftButton,
                         pos=QPoint(390, 290))
        self.assertFalse(self.selected.any())
        QTest.keyClick(self.gallery, Qt.Key.Key_A,
                       Qt.KeyboardModifier.ControlModifier)
        self.assertEqual(np.flatnonzero(self.selected).tolist(), [0, 1, 3, 5])

    def test_groups_have_headers_that_select_them(self):
        self.gallery.set_groups([
            Group("first", QColor(Qt.GlobalColor.red), np.array([4, 2])),
            Group("second", None, np.array([0, 1, 6]))])
        self.assertEqual(self.gallery.visible_rows(), [4, 2, 0, 1, 6])
        header = self.gallery._header_rect(1)
        self.assertGreater(header.height(), 0)
        self.assertEqual(self.gallery.item_at(header.center()),
                         ("header", 1))
        QTest.mouseClick(self.gallery.viewport(), Qt.MouseButton.LeftButton,
                         pos=header.center())
        self.assertEqual(np.flatnonzero(self.selected).tolist(), [0, 1, 6])
        self.assertEqual(self.gallery.row_at(
            self.gallery._cell_rect(0, 1).center()), 2)
        self.gallery.grab()

    def test_captions_make_cells_taller(self):
        self.gallery.set_rows(range(3))
        plain = self.gallery.cell_height
        self.gallery.caption = lambda row: f"image {row}"
        self.gallery.set_rows(range(3))
        self.assertGreater(self.gallery.cell_height, plain)
        self.assertEqual(self.gallery._cell_rect(0, 0).height(),
                         self.gallery.cell_height)
        self.click(2)
        self.assertEqual(np.flatnonzero(self.selected).tolist(), [2])
        self.gallery.grab()

    def test_overlay_is_drawn_over_the_thumbnail(self):
        self.gallery.set_rows(range(3))
        self.wait_for_thumbnails([0, 1, 2])
        overlay = QPixmap(40, 30)
        overlay.fill(QColor(0, 0, 0))
        self.gallery.set_overlays({1: overlay})
        picture = self.gallery.viewport().grab().toImage()
        for row, expected in ((0, COLOURS[0]), (1, (0, 0, 0))):
            colour = QColor(picture.pixel(
                self.gallery._cell_rect(0, row).center()))
            self.assertEqual((colour.red(), colour.green(), colour.blue()),
                             expected)

    def test_cells_are_framed_in_their_colours(self):
        self.gallery.set_rows(range(3))
        self.wait_for_thumbnails([0, 1, 2])

        def frame(row):  # the pixel left of the thumbnail, on its frame
            cell = self.gallery._cell_rect(0, row)
            x = cell.left() + self.gallery.PADDING - 2
            picture = self.gallery.viewport().grab().toImage()
            colour = QColor(picture.pixel(x, cell.center().y()))
            return colour.red(), colour.green(), colour.blue()

        self.assertIsNone(self.gallery.cell_color(0))
        self.assertNotEqual(frame(0), (0, 0, 255))
        self.gallery.set_colors(np.array([1, 0, 5]),
                                [QColor(255, 0, 0), QColor(0, 0, 255)])
        self.assertEqual(frame(0), (0, 0, 255))
        self.assertEqual(frame(1), (255, 0, 0))
        self.assertEqual(self.gallery.cell_color(2),
                         QColor(Qt.GlobalColor.gray))  # past the colours
        self.gallery.set_colors(None)
        self.assertIsNone(self.gallery.cell_color(0))
        self.assertNotEqual(frame(0), (0, 0, 255))

    def test_empty_gallery_says_so(self):
        self.gallery.placeholder = "Nothing here"
        self.gallery.set_groups([])
        self.assertEqual(self.gallery.visible_rows(), [])
        self.gallery.grab()


class TestGroupList(GuiTest):
    def test_selecting_groups(self):
        view = GroupList()
        spy = QSignalSpy(view.groupsSelected)
        groups = [Group("cats", QColor(Qt.GlobalColor.red), np.array([0, 2])),
                  Group("dogs", QColor(Qt.GlobalColor.blue), np.array([1]))]
        view.set_groups(groups, ["two cats", "one dog"])
        model = view.model()
        self.assertEqual(model.rowCount(), 2)
        self.assertEqual(model.item(0).text(), "cats (2)")
        self.assertEqual(model.item(1).toolTip(), "one dog")
        selection = view.selectionModel()
        selection.select(model.index(1, 0), selection.SelectionFlag.Select)
        self.assertEqual(list(spy)[-1], [[1]])
        count = len(spy)
        view.set_selection(np.array([True, False, True]))
        self.assertEqual([index.row() for index in
                          view.selectionModel().selectedRows()], [0])
        self.assertEqual(len(spy), count)  # showing it emits nothing


class TestImageMap(ViewTest):
    def test_rectangle_and_click_select(self):
        view = ImageMap(self.loader)
        view.resize(400, 300)
        spy = QSignalSpy(view.selectionRequested)
        coordinates = np.array([[0, 0], [10, 0], [0, 10], [10, 10],
                                [5, 5], [2, 8], [8, 2], [3, 3]], float)
        view.set_map(coordinates)
        view.set_clusters(np.array([0, 0, 1, 1, 0, 1, 0, 1]),
                          [QColor(Qt.GlobalColor.red),
                           QColor(Qt.GlobalColor.blue)])
        view.grab()  # paints, and asks for the thumbnails it shows
        QTest.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(1, 1))
        QTest.mouseRelease(view, Qt.MouseButton.LeftButton,
                           pos=QPoint(399, 299))
        rows, mode = list(spy)[-1]
        self.assertEqual(sorted(rows), list(range(len(coordinates))))
        self.assertEqual(mode, "replace")
        # a click on the thumbnail of a corner image selects it
        self.wait_for_thumbnails(view._shown.tolist())
        corner = view._to_screen(coordinates[[3]])[0]
        self.assertIn(3, view._shown.tolist())
        QTest.mouseClick(view, Qt.MouseButton.LeftButton,
                         pos=QPoint(int(corner[0]), int(corner[1])))
        self.assertEqual(list(spy)[-1], [[3], "replace"])
        view.close()


    def test_legend_names_the_colours(self):
        view = ImageMap(self.loader)
        view.resize(400, 300)
        view.set_map(np.array([[0, 0], [10, 10]], float))
        view.set_clusters(np.array([0, 1]), [QColor(255, 0, 0),
                                             QColor(0, 0, 255)],
                          ["red one", "blue one"])
        self.assertEqual(view.color_of(1), QColor(0, 0, 255))
        picture = view.grab().toImage()
        line = view.fontMetrics().height() + 2
        top = view.height() - 6 - 2 * line - 6 + 3
        for index, expected in enumerate(((255, 0, 0), (0, 0, 255))):
            colour = QColor(picture.pixel(
                17, int(top + index * line + line / 2)))
            self.assertEqual((colour.red(), colour.green(), colour.blue()),
                             expected)
        # a legend longer than the map shows what fits
        view.set_clusters(np.array([0, 1]), [], [str(i) for i in range(99)])
        view.grab()
        view.close()


class TestColourViews(GuiTest):
    def test_variable_colours_and_unknowns(self):
        var = DiscreteVariable("kind", values=("a", "b"))
        data = Table.from_numpy(Domain([var]), np.array([[1], [np.nan],
                                                         [0]]))
        labels, colors = variable_colors(data, var)
        np.testing.assert_array_equal(labels, [1, 2, 0])  # 2: unknown
        self.assertEqual([c.getRgb()[:3] for c in colors],
                         [tuple(int(v) for v in rgb) for rgb in var.colors])
        loader = ThumbnailLoader(size=32)
        gallery, view = ThumbnailGallery(loader), ImageMap(loader)
        colour_views(view, gallery, data, var, np.array([0, 0, 1]),
                     [QColor(1, 2, 3), QColor(4, 5, 6)])
        self.assertEqual(gallery.cell_color(0), colors[1])
        self.assertEqual(gallery.cell_color(1), QColor(Qt.GlobalColor.gray))
        self.assertEqual(view.color_of(2), colors[0])
        self.assertEqual(list(view.legend), ["a", "b"])
        colour_views(view, gallery, data, None, np.array([0, 0, 1]),
                     [QColor(1, 2, 3), QColor(4, 5, 6)])
        self.assertIsNone(gallery.cell_color(0))
        self.assertEqual(view.color_of(2), QColor(4, 5, 6))
        self.assertEqual(list(view.legend), [])
        loader.shutdown()


class TestSilhouettePlot(GuiTest):
    def test_click_on_a_bar_gives_its_number(self):
        plot = SilhouettePlot()
        plot.resize(300, 110)
        spy = QSignalSpy(plot.clusterCountClicked)
        plot.set_scores({2: 0.3, 3: 0.5, 4: 0.2}, 3, 3)
        bars = plot._bars()
        self.assertEqual([k for k, _, _ in bars], [2, 3, 4])
        # the best bar is the tallest
        self.assertEqual(max(bars, key=lambda bar: bar[1].height())[0], 3)
        QTest.mouseClick(plot, Qt.MouseButton.LeftButton,
                         pos=bars[2][1].center().toPoint())
        self.assertEqual(list(spy), [[4]])
        plot.grab()


if __name__ == "__main__":
    unittest.main()
