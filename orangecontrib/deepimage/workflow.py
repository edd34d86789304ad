"""Run saved Orange workflows (``.ows``) without a screen.

``deepimage run WORKFLOW.ows`` loads a workflow with Orange's own machinery
(the installed widgets, Orange's core, orange3-imageanalytics' and ours),
creates every widget offscreen, lets signals flow until nothing is pending
and no widget is busy (background tasks included), and reports each widget's
errors and warnings. It can write the workflow's report as HTML and chosen
outputs to files::

    deepimage run photos.ows --report report.html \\
        --output "Image Clusters:Data=clusters.tab"

Qt must have a platform: the runner sets ``QT_QPA_PLATFORM=offscreen`` when
no display is set.
"""
import html
import os
import pickle
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["run_workflow", "WorkflowResult", "NodeReport", "parse_output_spec",
           "WorkflowError"]

_APP = None


class WorkflowError(Exception):
    """The workflow could not be loaded or did not finish."""


@dataclass
class NodeReport:
    """What one widget said at the end of the run."""
    title: str
    widget: str
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    information: List[str] = field(default_factory=list)


@dataclass
class WorkflowResult:
    """The outcome of :func:`run_workflow`."""
    path: str
    nodes: List[NodeReport]
    seconds: float
    outputs: Dict[Tuple[str, str], Any] = field(default_factory=dict)
    report_html: Optional[str] = None

    @property
    def failed(self) -> List[NodeReport]:
        """Widgets that show an error."""
        return [node for node in self.nodes if node.errors]


def parse_output_spec(spec: str) -> Tuple[str, str, str]:
    """Split ``"Widget title:Output name=file"`` into its three parts."""
    try:
        source, path = spec.rsplit("=", 1)
        title, output = source.split(":", 1)
    except ValueError:
        raise ValueError(f"An output is written as 'Widget name:Output "
                         f"name=file'. Received: {spec!r}") from None
    return title.strip(), output.strip(), path.strip()


def _application():
    os.environ.setdefault("QT_QPA_PLATFORM",
                          "offscreen" if not os.environ.get("DISPLAY")
                          else os.environ.get("QT_QPA_PLATFORM", "xcb"))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # QtWebEngine's Chromium (Orange's report view) exits the process
        # when started as root with its sandbox, e.g. in a container.
        os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")
    from AnyQt.QtWidgets import QApplication
    global _APP  # pylint: disable=global-statement
    if QApplication.instance() is None:
        # Kept in a global: a collected QApplication crashes Qt.
        _APP = QApplication(["deepimage"])
    return QApplication.instance()


@lru_cache(maxsize=1)
def _registry():
    """All installed widgets (discovered once per process)."""
    from Orange.canvas.config import Config
    from orangecanvas.registry import WidgetRegistry
    config = Config()
    registry = WidgetRegistry()
    config.widget_discovery(registry).run(config.widgets_entry_points())
    return registry


def _load(path, registry, env):
    from orangecanvas.scheme import readwrite
    from orangecanvas.scheme.widgetmanager import WidgetManager
    from orangewidget.workflow.widgetsscheme import WidgetsScheme
    problems = []

    def collect(error):
        problems.append(str(error))
    scheme = WidgetsScheme(env=env)
    scheme.widget_manager.set_creation_policy(WidgetManager.Immediate)
    sent = _record_outputs(scheme)
    with open(path, "rb") as stream:
        try:
            readwrite.scheme_load(scheme, stream, registry=registry,
                                  error_handler=collect)
        except Exception as error:  # orangecanvas raises many kinds
            raise WorkflowError(f"Cannot read {path}: {error}") from error
    if problems:
        raise WorkflowError(f"{path} needs widgets that are not installed "
                            f"or cannot be loaded: " + "; ".join(problems))
    return scheme, sent


def _record_outputs(scheme) -> Dict[Tuple[str, str], Any]:
    """Remember the last value every widget sends on every output."""
    manager = scheme.signal_manager
    sent = {}
    original_send = manager.send

    def send(widget, channel, value, *args, **kwargs):
        node = scheme.node_for_widget(widget)
        name = getattr(channel, "name", channel)
        if node is not None:
            sent[(node.title, name)] = value
        return original_send(widget, channel, value, *args, **kwargs)
    manager.send = send
    return sent


def _is_idle(scheme) -> bool:
    manager = scheme.signal_manager
    if manager.has_pending():
        return False
    for node in scheme.nodes:
        widget = scheme.widget_for_node(node)
        if widget is None:
            return False
        if widget.isInvalidated() or getattr(widget, "task", None):
            return False
    return True


def _wait_until_idle(scheme, timeout: float, settle: float = 0.5) -> bool:
    """Run Qt's event loop until the workflow has been idle for `settle` s."""
    from AnyQt.QtCore import QEventLoop, QTimer
    loop = QEventLoop()
    deadline = time.monotonic() + timeout
    idle_since = [None]
    finished = [False]

    def check():
        now = time.monotonic()
        if _is_idle(scheme):
            idle_since[0] = idle_since[0] or now
            if now - idle_since[0] >= settle:
                finished[0] = True
                loop.quit()
                return
        else:
            idle_since[0] = None
        if now > deadline:
            loop.quit()

    timer = QTimer()
    timer.setInterval(50)
    timer.timeout.connect(check)
    timer.start()
    loop.exec()
    timer.stop()
    return finished[0]


def _node_reports(scheme) -> List[NodeReport]:
    reports = []
    for node in scheme.nodes:
        report = NodeReport(node.title, node.description.name)
        for message in node.state_messages():
            text = message.contents
            if not text:
                continue  # a cleared message group
            if message.severity >= 3:
                report.errors.append(text)
            elif message.severity == 2:
                report.warnings.append(text)
            elif message.severity == 1:
                report.information.append(text)
        reports.append(report)
    return reports


def _report_html(scheme, title: str, nodes: List[NodeReport]) -> str:
    sections = []
    for node, status in zip(scheme.nodes, nodes):
        widget = scheme.widget_for_node(node)
        if not hasattr(widget, "send_report"):
            body = ""  # e.g. Import Images has no report
        else:
            try:
                widget.create_report_html()
                body = widget.report_html
            except Exception as error:  # pylint: disable=broad-except
                body = f"<p>(no report: {html.escape(str(error))})</p>"
        notes = "".join(
            f'<p class="{kind}">{kind.capitalize()}: {html.escape(text)}</p>'
            for kind, texts in (("error", status.errors),
                                ("warning", status.warnings))
            for text in texts)
        sections.append(f"<h2>{html.escape(node.title)}</h2>{notes}{body}")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}"
             ".error{color:#b00}.warning{color:#a60}"
             "table{border-collapse:collapse}td,th{padding:2px 6px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{style}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>"
            + "".join(sections) + "</body></html>")


def _write_output(value, path: str) -> None:
    from Orange.data import Table
    if value is None:
        raise WorkflowError(f"Nothing was sent to be written to {path}")
    if isinstance(value, Table):
        value.save(path)
    else:
        with open(path, "wb") as file:
            pickle.dump(value, file)


def run_workflow(path: str, timeout: float = 1800,
                 report: Optional[str] = None,
                 outputs: Sequence[str] = ()) -> WorkflowResult:
    """Load and run a saved workflow headless.

    Parameters
    ----------
    path : str
        The ``.ows`` file.
    timeout : float
        Seconds to wait for all widgets to finish.
    report : str, optional
        Write the workflow's report (every widget's report section, with
        its errors and warnings) to this HTML file.
    outputs : sequence of str
        ``"Widget title:Output name=file"``: write that output (a table as
        ``.tab``/``.csv``/…, anything else pickled).

    Returns
    -------
    WorkflowResult

    Raises
    ------
    WorkflowError
        When the workflow cannot be loaded, does not finish in time, or a
        requested output does not exist.
    """
    if not os.path.isfile(path):
        raise WorkflowError(f"No such workflow: {path}")
    wanted = [parse_output_spec(spec) for spec in outputs]
    _application()
    start = time.monotonic()
    # Relative paths in widgets' settings start from the workflow's folder.
    env = {"basedir": os.path.dirname(os.path.abspath(path))}
    scheme, sent = _load(path, _registry(), env)
    scheme.signal_manager.start()
    finished = _wait_until_idle(scheme, timeout)
    nodes = _node_reports(scheme)
    result = WorkflowResult(path, nodes, time.monotonic() - start, dict(sent))
    try:
        if not finished:
            busy = [node.title for node in scheme.nodes
                    if scheme.widget_for_node(node).isInvalidated()]
            raise WorkflowError(f"The workflow did not finish within "
                                f"{timeout:.0f} s; still busy: "
                                f"{', '.join(busy) or 'signals pending'}")
        if report:
            result.report_html = _report_html(
                scheme, scheme.title or os.path.basename(path), nodes)
            with open(report, "w", encoding="utf-8") as file:
                file.write(result.report_html)
        titles = {node.title for node in scheme.nodes}
        for title, output, target in wanted:
            if title not in titles:
                raise WorkflowError(f"No widget named {title!r}; the "
                                    f"workflow has {sorted(titles)}")
            _write_output(sent.get((title, output)), target)
    finally:
        _close(scheme)
    return result


def _close(scheme):
    """Stop every widget's work and delete the widgets now."""
    import gc
    from AnyQt.QtCore import QCoreApplication, QEvent
    for node in list(scheme.nodes):
        widget = scheme.widget_for_node(node)
        if widget is not None and hasattr(widget, "shutdown"):
            widget.shutdown()
    scheme.signal_manager.stop()
    scheme.clear()
    # Widgets are deleted with deleteLater(); deferred deletes run only when
    # asked for by their event type, and would otherwise outlive the run.
    QCoreApplication.sendPostedEvents(None, 0)
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    scheme.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


def format_result(result: WorkflowResult) -> str:
    """Plain text summary: one line per widget, its errors and warnings."""
    lines = []
    for node in result.nodes:
        state = "error" if node.errors else \
            "warning" if node.warnings else "ok"
        lines.append(f"{state:8} {node.title} ({node.widget})")
        lines += [f"         error: {text}" for text in node.errors]
        lines += [f"         warning: {text}" for text in node.warnings]
    lines.append(f"{len(result.nodes)} widgets, {len(result.failed)} with "
                 f"errors, {result.seconds:.1f} s")
    return "\n".join(lines)
