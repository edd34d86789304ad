"""Command line: ``deepimage run WORKFLOW.ows``, ``deepimage demo``,
``deepimage embed`` and ``deepimage predict`` (see batch.py).

Also ``python -m orangecontrib.deepimage ...``.
"""
import argparse
import os
import sys
from typing import List, Optional


def _run(args) -> int:
    from orangecontrib.deepimage.workflow import (
        WorkflowError, format_result, run_workflow)
    try:
        result = run_workflow(args.workflow, timeout=args.timeout,
                              report=args.report, outputs=args.output)
    except (WorkflowError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_result(result))
    if args.report:
        print(f"Report written to {os.path.abspath(args.report)}")
    return 1 if result.failed else 0


def _demo(args) -> int:
    from orangecontrib.deepimage.demo import run_demo
    try:
        path = run_demo(args.out, photos_dir=args.photos,
                        tutorials=not args.photos_only)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Report written to {os.path.abspath(path)}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    main_parser = argparse.ArgumentParser(
        prog="deepimage", description="Orange3-DeepImage from the command "
                                      "line.")
    commands = main_parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run a saved Orange workflow headless",
        description="Run every widget of a saved workflow offscreen until "
                    "all work is done; exit with 1 when a widget shows an "
                    "error, 2 when the workflow cannot be run.")
    run.add_argument("workflow", help="the .ows file")
    run.add_argument("--report", metavar="FILE.html",
                     help="write the workflow's report as HTML")
    run.add_argument("--output", action="append", default=[],
                     metavar="'WIDGET:OUTPUT=FILE'",
                     help="write a widget's output to a file (a table as "
                          ".tab/.csv/.xlsx, anything else pickled); "
                          "may be repeated")
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
    """Run the command line; return the exit code."""
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
