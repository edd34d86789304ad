"""Run saved Orange workflows (``.ows``) without a screen.

``deepimage run WORKFLOW.ows`` loads a workflow with Orange's own machinery
(the installed widgets, Orange's core, orange3-imageanalytics' and ours),
creates every widget offscreen, lets signals flow until nothing is pending
and no widget is busy (background tasks included), and reports each widget's
errors and warnings and its key results, read from what it sent (scores of
evaluation results, figures of trained models, rows, classes and clusters of
tables, and the files it wrote and where; :func:`describe_output`). It can
write the workflow's report as HTML and chosen outputs to files::

    deepimage run photos.ows --report report.html \\
        --output "Image Clusters:Data=clusters.tab"

A ``.csv`` output is written as Orange writes it (three header rows: names,
types, roles), or with ``plain_csv`` (``--plain-csv``) with one row of
column names for spreadsheets (:func:`write_plain_csv`).

Qt must have a platform: the runner sets ``QT_QPA_PLATFORM=offscreen`` when
no display is set.
"""
import csv
import html
import os
import pickle
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from orangecontrib.deepimage.report import (
    drop_empty_sections, shift_headings, shorten_long_lists)

__all__ = ["run_workflow", "WorkflowResult", "NodeReport", "parse_output_spec",
           "WorkflowError", "format_result", "describe_output",
           "write_plain_csv"]

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
    #: Results, one line each (see :func:`describe_output`), and the
    #: files written.
    results: List[str] = field(default_factory=list)
    #: Those of `results` that are news: not the rows of an input passed on.
    key_results: List[str] = field(default_factory=list)


@dataclass
class WorkflowResult:
    """The outcome of :func:`run_workflow`."""
    path: str
    nodes: List[NodeReport]
    seconds: float
    outputs: Dict[Tuple[str, str], Any] = field(default_factory=dict)
    report_html: Optional[str] = None
    #: Files written for `outputs` asked for, as (what, absolute path).
    written: List[Tuple[str, str]] = field(default_factory=list)

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


def _busy_widgets(scheme) -> List[Tuple[str, Optional[float]]]:
    busy = []
    for node in scheme.nodes:
        widget = scheme.widget_for_node(node)
        if widget is None:
            continue
        if widget.isInvalidated() or getattr(widget, "task", None):
            # a Qt property of Orange's widgets (a method on some)
            value = getattr(widget, "progressBarValue", -1)
            value = value() if callable(value) else value
            busy.append((node.title, value if value is not None
                         and value >= 0 else None))
    return busy


def _wait_until_idle(scheme, timeout: float, settle: float = 0.5,
                     progress=None, every: float = 1.0) -> bool:
    """Run Qt's event loop until the workflow has been idle for `settle` s."""
    from AnyQt.QtCore import QEventLoop, QTimer
    loop = QEventLoop()
    deadline = time.monotonic() + timeout
    idle_since = [None]
    finished = [False]
    reported = [time.monotonic()]

    def check():
        now = time.monotonic()
        if progress is not None and now - reported[0] >= every:
            reported[0] = now
            progress(_busy_widgets(scheme))
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
    if progress is not None:
        progress([])
    return finished[0]


def _node_reports(scheme, sent=None, since: Optional[float] = None
                  ) -> List[NodeReport]:
    reports = []
    for node in scheme.nodes:
        report = NodeReport(node.title, node.description.name)
        if sent is not None:
            report.results, report.key_results = _node_results(
                scheme, node, sent, since)
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


# --- key results ---------------------------------------------------------

#: Tables with more values of a class variable list only their number.
_MAX_LISTED = 10


def describe_output(name: str, value) -> List[str]:
    """Key results of what a widget sent on its output `name`.

    Evaluation results give each learner's accuracy; a trained model its
    validation figures (per-class IoU of a segmentation model, accuracy of
    a classifier); a table its rows, classes and clusters. Other values
    give nothing.

    Returns
    -------
    list of str
        Lines of text, possibly none.
    """
    from Orange.data import Table
    from Orange.evaluation import Results
    if value is None:
        return []
    if isinstance(value, Results):
        return _describe_results(value)
    if isinstance(value, Table):
        return [f"{name}: {_describe_table(value)}"]
    return _describe_model(name, value)


def _describe_results(results) -> List[str]:
    import numpy as np
    actual = np.asarray(results.actual)
    folds = getattr(results, "folds", None)
    how = f" ({len(folds)}-fold cross-validation)" \
        if folds is not None and len(folds) > 1 else ""
    names = list(getattr(results, "learner_names", None) or
                 [f"learner {i + 1}" for i in range(len(results.predicted))])
    lines = []
    for name, predicted in zip(names, results.predicted):
        known = ~np.isnan(predicted) & ~np.isnan(actual)
        if not known.any():
            continue
        accuracy = float(np.mean(predicted[known] == actual[known]))
        lines.append(f"{name}: accuracy {accuracy:.3f} on "
                     f"{int(known.sum())} rows{how}")
    return lines


def _describe_table(table) -> str:
    import numpy as np
    parts = [f"{len(table)} rows"]
    class_var = table.domain.class_var
    if class_var is not None and class_var.is_discrete:
        values = class_var.values
        parts.append(f"{len(values)} class{'es' * (len(values) != 1)}" + (
            f" ({', '.join(values)})" if len(values) <= _MAX_LISTED else ""))
    for var in table.domain.metas:
        if var.is_discrete and var.name.startswith("Cluster") and len(table):
            column = table.get_column(var)
            n_used = len(np.unique(column[~np.isnan(column)]))
            parts.append(f"{n_used} clusters")
            break
    return ", ".join(parts)


def _describe_model(name: str, model) -> List[str]:
    import numpy as np
    lines = []
    metrics = getattr(model, "validation_metrics", None)
    classes = getattr(model, "class_names", None)
    if isinstance(metrics, dict) and metrics.get("iou") is not None \
            and classes is not None:
        ious = ", ".join(
            f"{label} {iou:.3f}" for label, iou in zip(classes, metrics["iou"])
            if iou is not None and np.isfinite(iou))
        if ious:
            lines.append(f"{name}: validation IoU per class: {ious}")
    history = getattr(model, "history", None)
    if isinstance(history, dict) and history.get("accuracy"):
        epochs = len(history["accuracy"])
        figures = [f"training accuracy {history['accuracy'][-1]:.3f}"]
        if history.get("val_accuracy"):
            figures.append(
                f"validation accuracy {history['val_accuracy'][-1]:.3f}")
        lines.append(f"{name}: {', '.join(figures)} (epoch {epochs})")
    return lines


def _image_columns(table) -> Dict[Tuple[str, str], Any]:
    return {(var.name, var.attributes.get("origin", "")): var
            for var in table.domain.metas
            if var.attributes.get("type") == "image"}


def _files_written(table, inputs, since: Optional[float] = None
                   ) -> List[str]:
    """Image columns of `table` that are not in the `inputs` tables and
    point to files: the files the widget made or gave. Only files modified
    after `since` (a ``time.time()``; None: all) count as written by this
    run; the others were there already (e.g. a widget reused files of the
    same content, or sends annotations that it only read)."""
    from orangecontrib.deepimage.images import image_paths
    seen = {}
    for source in inputs:
        seen.update(_image_columns(source))
    lines = []
    for key, var in _image_columns(table).items():
        if key in seen:
            continue
        paths = {path for path in image_paths(table, var)
                 if path is not None and os.path.isfile(path)}
        if paths:
            folders = {os.path.dirname(path) for path in paths}
            where = folders.pop() if len(folders) == 1 \
                else f"{len(folders) + 1} folders"
            new = len(paths) if since is None else sum(
                os.path.getmtime(path) >= since for path in paths)
            if new == len(paths):
                lines.append(f"{len(paths)} files written ({var.name}) "
                             f"to {where}")
            else:
                done = "none" if not new else f"{new}"
                lines.append(f"{len(paths)} files ({var.name}) in {where}, "
                             f"{done} written by this run")
    return lines


def _node_results(scheme, node, sent, since: Optional[float] = None
                  ) -> Tuple[List[str], List[str]]:
    """All result lines of a node, and the key ones among them: all but
    tables that are a row-for-row copy of an input (same number of rows,
    no clusters added)."""
    from Orange.data import Table
    inputs = [sent.get((link.source_node.title, link.source_channel.name))
              for link in scheme.links if link.sink_node is node]
    inputs = [value for value in inputs if isinstance(value, Table)]
    lengths = {len(value) for value in inputs}
    clustered = any("Cluster" in value.domain for value in inputs)
    lines, key, written = [], [], []
    for (title, name), value in sent.items():
        if title != node.title:
            continue
        described = describe_output(name, value)
        lines += described
        if not isinstance(value, Table) or not inputs \
                or len(value) not in lengths \
                or ("Cluster" in value.domain and not clustered):
            key += described
        if inputs and isinstance(value, Table):
            written += [line for line in _files_written(value, inputs, since)
                        if line not in written]
    return lines + written, key + written


# --- report ----------------------------------------------------------------

def _widget_report(widget) -> str:
    """The widget's report without its own title (the section names it),
    headings from ``h3`` on."""
    import re
    if not hasattr(widget, "send_report"):
        return ""  # e.g. Import Images has no report
    try:
        widget.create_report_html()
        body = widget.report_html
    except Exception as error:  # pylint: disable=broad-except
        # A widget's report failing must not lose the run's results.
        return f"<p class='error'>(no report: {html.escape(str(error))})</p>"
    # Orange's report starts with an h1: the widget's name and the time.
    body = re.sub(r"<h1\b.*?</h1\s*>", "", body, count=1, flags=re.S | re.I)
    return shift_headings(body, 1)


def _report_html(scheme, title: str, nodes: List[NodeReport]) -> str:
    """The workflow's report: one h1, an h2 per widget with its errors,
    warnings, key results and report (empty sections left out)."""
    sections = []
    for node, status in zip(scheme.nodes, nodes):
        notes = "".join(
            f'<p class="{kind}">{kind.capitalize()}: {html.escape(text)}</p>'
            for kind, texts in (("error", status.errors),
                                ("warning", status.warnings))
            for text in texts)
        results = "".join(f"<li>{html.escape(text)}</li>"
                          for text in status.results)
        if results:
            notes += f"<ul class='results'>{results}</ul>"
        body = _widget_report(scheme.widget_for_node(node))
        sections.append(f"<section><h2>{html.escape(node.title)}</h2>"
                        f"{notes}{body}</section>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}"
             ".error{color:#b00}.warning{color:#a60}"
             "table{border-collapse:collapse}td,th{padding:2px 6px}")
    body = shorten_long_lists(drop_empty_sections("".join(sections)))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{style}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>"
            + body + "</body></html>")


def write_plain_csv(table, path: str) -> None:
    """Write `table` as a CSV file with one header row, for spreadsheets.

    The columns are the metas (e.g. image name and path), the class
    variables, then the features, each headed by its name; categorical
    values are written as their labels, numbers in full precision, and
    missing values as empty cells. UTF-8, comma-separated.
    """
    import numpy as np
    domain = table.domain
    columns = list(domain.metas) + list(domain.class_vars) \
        + list(domain.attributes)
    values = [table.get_column(var) for var in columns]

    def text(var, value):
        if var.is_string:
            return "" if value is None or (isinstance(value, float)
                                           and np.isnan(value)) \
                else str(value)
        value = float(value)
        if np.isnan(value):
            return ""
        if var.is_discrete:
            return var.values[int(value)]
        if var.is_time:
            return var.str_val(value)
        if value.is_integer() and getattr(var, "number_of_decimals", 1) == 0:
            return str(int(value))
        return repr(value)

    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([var.name for var in columns])
        for row in range(len(table)):
            writer.writerow([text(var, column[row])
                             for var, column in zip(columns, values)])


def _write_output(value, path: str, plain_csv: bool = False) -> None:
    from Orange.data import Table
    if value is None:
        raise WorkflowError(f"Nothing was sent to be written to {path}")
    if isinstance(value, Table):
        if plain_csv and path.lower().endswith(".csv"):
            write_plain_csv(value, path)
        else:
            value.save(path)
    else:
        with open(path, "wb") as file:
            pickle.dump(value, file)


def run_workflow(path: str, timeout: float = 1800,
                 report: Optional[str] = None,
                 outputs: Sequence[str] = (), plain_csv: bool = False,
                 progress: Optional[Callable[[List[Tuple[str, Optional[
                     float]]]], None]] = None) -> WorkflowResult:
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
    plain_csv : bool
        Write ``.csv`` tables with one header row (:func:`write_plain_csv`)
        instead of Orange's three.
    progress : callable, optional
        Called about once a second with the busy widgets, as (title,
        percent done or None), while the workflow runs; with an empty list
        when it is done.

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
    # (whole seconds: some file systems keep modification times so)
    started = float(int(time.time()))
    # Relative paths in widgets' settings start from the workflow's folder.
    env = {"basedir": os.path.dirname(os.path.abspath(path))}
    scheme, sent = _load(path, _registry(), env)
    scheme.signal_manager.start()
    finished = _wait_until_idle(scheme, timeout, progress=progress)
    nodes = _node_reports(scheme, sent, started)
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
            _write_output(sent.get((title, output)), target, plain_csv)
            result.written.append((f"{title}: {output}",
                                   os.path.abspath(target)))
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
    """Plain text summary: a line per widget, its errors, warnings and key
    results, and the files written for the outputs asked for."""
    lines = []
    for node in result.nodes:
        state = "error" if node.errors else \
            "warning" if node.warnings else "ok"
        lines.append(f"{state:8} {node.title} ({node.widget})")
        lines += [f"         error: {text}" for text in node.errors]
        lines += [f"         warning: {text}" for text in node.warnings]
        lines += [f"         {text}" for text in node.results]
    lines.append(f"{len(result.nodes)} widgets, {len(result.failed)} with "
                 f"errors, {result.seconds:.1f} s")
    lines += [f"Wrote {what} to {path}" for what, path in result.written]
    return "\n".join(lines)
