"""The full text of a widget's errors, wrapped, inside the widget.

Orange shows a widget's messages in its status bar on one line, elided to
the window's width: in a narrow widget of fixed size a long error such as
"The ImageNet weights for ... could not be downloaded: ... Put the file in
..." is cut to its first words. :class:`WrappedErrors` repeats the errors
in a word-wrapped label in the widget, so that all of their text is read.
"""
from AnyQt.QtCore import Qt
from AnyQt.QtWidgets import QLabel, QSizePolicy, QWidget

__all__ = ["WrappedErrors"]


class WrappedErrors(QLabel):
    """A label with the text of `widget`'s shown errors, hidden when there
    are none; put it into a layout of the widget."""

    def __init__(self, widget, parent: QWidget = None):
        super().__init__(parent, wordWrap=True, visible=False)
        self.setObjectName("wrapped-errors")
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Minimum)
        self.setStyleSheet("color: #b00000;")
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.__widget = widget
        widget.messageActivated.connect(self.update_text)
        widget.messageDeactivated.connect(self.update_text)

    def update_text(self, *_):
        """Show the errors now shown by the widget (called on each change)."""
        texts = [str(message) for message in self.__widget.Error.active]
        self.setText("\n".join(texts))
        self.setVisible(bool(texts))
