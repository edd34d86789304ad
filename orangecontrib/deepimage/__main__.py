"""Command line: ``deepimage run WORKFLOW.ows``, ``deepimage demo``,
``deepimage embed`` and ``deepimage predict`` (see batch.py).

Also ``python -m orangecontrib.deepimage ...``.

TensorFlow prints several lines when it starts (which CPU instructions it
was built for, that no CUDA driver was found, ...) through its C++ logging,
much of it before that logging can be configured. The command line, which
owns its process, hides those start-up lines: ``TF_CPP_MIN_LOG_LEVEL=2`` and
absl's Python logging at warnings are set before TensorFlow loads, and the
lines TensorFlow writes to the standard error before its logging is set up
are filtered (:class:`StartupNoiseFilter`). Everything else on the standard
error, Python's tracebacks and warnings and TensorFlow's own errors, passes.
Set ``TF_CPP_MIN_LOG_LEVEL`` to 0 or 1 to see every line.
"""
import argparse
import os
import re
import sys
import threading
from contextlib import contextmanager
from typing import List, Optional


class StartupNoiseFilter:
    """Decide, line by line, what of the standard error is start-up noise.

    Dropped: TensorFlow's C++ log lines of severity info and warning (``I``
    and ``W``, which ``TF_CPP_MIN_LOG_LEVEL=2`` is meant to hide but
    cannot before absl's logging is initialised), absl's note that logging
    is not initialised yet, the error that no CUDA driver could be
    initialised on a machine without a GPU, and the continuation line of
    the CPU-instructions notice. Everything else is kept.
    """
    _LOG_LINE = re.compile(
        rb"^(?P<severity>[IWEF])\d{4} [\d:.]+\s+\d+\s+[\w.\-]+:\d+\] "
        rb"(?P<message>.*)")
    _NOISE = (
        re.compile(rb"^WARNING: All log messages before absl::InitializeLog"
                   rb"\(\) is called are written to STDERR"),
    )
    _NOISY_ERRORS = (
        re.compile(rb"failed call to cuInit"),
        re.compile(rb"Unable to register cu(DNN|FFT|BLAS) factory"),
        re.compile(rb"computation placer already registered"),
    )
    _CONTINUATION = re.compile(rb"^To enable the following instructions:")

    def __init__(self):
        self._after_dropped = False

    def keep(self, line: bytes) -> bool:
        """Whether `line` (bytes, with or without its newline) is shown."""
        after_dropped, self._after_dropped = self._after_dropped, False
        match = self._LOG_LINE.match(line)
        if match is not None:
            severity = match.group("severity")
            if severity in (b"I", b"W") or (
                    severity == b"E" and any(
                        noise.search(match.group("message"))
                        for noise in self._NOISY_ERRORS)):
                self._after_dropped = True
                return False
            return True
        if any(noise.match(line) for noise in self._NOISE):
            return False
        if after_dropped and self._CONTINUATION.match(line):
            return False
        return True


@contextmanager
def quiet_tensorflow_startup():
    """Hide TensorFlow's start-up lines from this process' standard error.

    Nothing is changed when ``TF_CPP_MIN_LOG_LEVEL`` is set below 2 (the
    user asked for TensorFlow's information and warnings) or the standard
    error has no file descriptor.
    """
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    if level.strip().isdigit() and int(level) < 2:
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = level if level.strip().isdigit() \
        else "2"
    try:
        import absl.logging
        absl.logging.set_verbosity(absl.logging.WARNING)
    except ImportError:  # absl comes with TensorFlow
        pass
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    copier = threading.Thread(target=_copy_lines,
                              args=(read_end, original, StartupNoiseFilter()),
                              name="stderr filter", daemon=True)
    copier.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # the pipe's last writer here: the copier ends
        # Processes started meanwhile may hold the pipe open; do not wait
        # for them.
        copier.join(timeout=2)
        os.close(original)


def _copy_lines(read_end: int, target: int, noise: StartupNoiseFilter):
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines
                            if noise.keep(line))
            if kept:
                os.write(target, kept)
        if pending and noise.keep(pending):
            os.write(target, pending)


def _run(args) -> int:
    from orangecontrib.deepimage.workflow import (
        WorkflowError, format_result, run_workflow)
    progress = _terminal_progress(sys.stderr) if sys.stderr.isatty() \
        else None
    try:
        result = run_workflow(args.workflow, timeout=args.timeout,
                              report=args.report, outputs=args.output,
                              plain_csv=args.plain_csv, progress=progress)
    except (WorkflowError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_result(result))
    if args.report:
        print(f"Report written to {os.path.abspath(args.report)}")
    return 1 if result.failed else 0


def _terminal_progress(stream):
    """A run_workflow progress callback that writes one updated line."""
    def show(busy):
        text = ", ".join(f"{title} {percent:.0f} %" if percent is not None
                         else title for title, percent in busy)
        stream.write(f"\r\x1b[Krunning: {text}" if text else "\r\x1b[K")
        stream.flush()
    return show


def _demo(args) -> int:
    from orangecontrib.deepimage.demo import run_demo
    try:
        path = run_demo(args.out, photos_dir=args.photos,
                        tutorials=not args.photos_only,
                        log=lambda text: print(text, flush=True))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Report written to {os.path.abspath(path)}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    main_parser = argparse.ArgumentParser(
        prog="deepimage", description="Orange3-DeepImage from the command "
                                      "line. TensorFlow's start-up messages "
                                      "are hidden unless TF_CPP_MIN_LOG_LEVEL "
                                      "is 0 or 1.")
    commands = main_parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run a saved Orange workflow headless",
        description="Run every widget of a saved workflow offscreen until "
                    "all work is done, and print each widget's state and "
                    "key results (scores, counts, files written); exit "
                    "with 1 when a widget shows an error, 2 when the "
                    "workflow cannot be run.")
    run.add_argument("workflow", help="the .ows file")
    run.add_argument("--report", metavar="FILE.html",
                     help="write the workflow's report as HTML")
    run.add_argument("--output", action="append", default=[],
                     metavar="'WIDGET:OUTPUT=FILE'",
                     help="write a widget's output to a file (a table as "
                          ".tab/.csv/.xlsx, anything else pickled); "
                          "may be repeated")
    run.add_argument("--plain-csv", action="store_true",
                     help="write .csv outputs with a single header row of "
                          "column names (for spreadsheets), not Orange's "
                          "three header rows")
    run.add_argument("--timeout", type=float, default=1800,
                     help="seconds to wait for the widgets (default 1800)")
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo", help="embed the bundled photos and run every tutorial, "
                     "offline, and write an HTML report")
    demo.add_argument("--out", default=os.path.join("build", "demo"),
                      help="output folder (default build/demo)")
    demo.add_argument("--photos", help="a folder of photos to embed "
                                       "instead of the bundled ones")
    demo.add_argument("--photos-only", action="store_true",
                      help="skip the tutorial workflows")
    demo.set_defaults(handler=_demo)

    from orangecontrib.deepimage.batch import add_commands
    add_commands(commands)
    return main_parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the exit code.

    Called without `argv` (as the ``deepimage`` command is), it reads
    ``sys.argv`` and hides TensorFlow's start-up lines
    (:func:`quiet_tensorflow_startup`).
    """
    args = parser().parse_args(argv)
    if argv is not None:
        return args.handler(args)
    with quiet_tensorflow_startup():
        return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
