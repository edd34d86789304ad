"""No widget warns when it is created (the canvas shows such warnings on
every start)."""
import importlib
import pkgutil
import unittest
import warnings

from Orange.widgets.tests.base import WidgetTest
from Orange.widgets.widget import OWWidget

import orangecontrib.deepimage.widgets as widgets_package


def widget_classes():
    for module_info in pkgutil.iter_modules(widgets_package.__path__):
        if not module_info.name.startswith("ow"):
            continue
        module = importlib.import_module(
            f"{widgets_package.__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, OWWidget) \
                    and value.__module__ == module.__name__ \
                    and getattr(value, "name", None):
                yield value


class TestNoWarningsAtStart(WidgetTest):
    def test_no_widget_warns_when_created(self):
        classes = list(widget_classes())
        self.assertGreaterEqual(len(classes), 9)
        for cls in classes:
            with self.subTest(widget=cls.__name__):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    self.create_widget(cls)
                # (Deprecations come from the libraries' own imports.)
                self.assertEqual(
                    [str(w.message) for w in caught
                     if not issubclass(w.category, DeprecationWarning)], [])


if __name__ == "__main__":
    unittest.main()
