"""Command-line interface: argument parsing and printing only.

Each subcommand lives in ``subsetsum_lth/commands/<name>.py`` and exposes ``NAME``, ``HELP``,
``add_arguments(parser)``, ``REQUEST`` (its request class in :mod:`subsetsum_lth.request`, whose
``from_args`` is the one reader of the parsed flags) and ``run(request) -> int``. ``COMMANDS``
below is the one registry.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading

from subsetsum_lth import __version__
from subsetsum_lth.atomic import DISK_FULL_ERRNOS, disk_full_message
from subsetsum_lth.commands._help import HelpFormatter
from subsetsum_lth.errors import CertificateViolation, IncompleteRun, UserError
from subsetsum_lth.solvers.interrupt import stop_native_calls_on_signals
from subsetsum_lth.safetext import escape

#: subcommand name -> module under subsetsum_lth.commands
COMMANDS = {
    "train-target": "train_target",
    "approximate": "approximate",
    "certify": "certify",
    "solvers": "solvers_cmd",
    "edge-popup": "edge_popup",
    "compare": "compare",
    "bench": "bench",
    "inspect": "inspect",
    "export-dense": "export_dense",
}


class Parser(argparse.ArgumentParser):
    """A bad flag is one line on stderr (what is wrong, and where the help is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {escape(message)} (see '{self.prog} --help')\n")


def _load(module: str):
    return importlib.import_module(f"subsetsum_lth.commands.{module}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command``, only that subcommand gets its options (the others'
    ``add_arguments`` import the library modules their config defaults come from: torch)."""
    parser = Parser(
        prog="subsetsum-lth",
        description="Strong lottery tickets by subset sum: prune a random ReLU network so that "
                    "it approximates a trained one to a certified error, with no training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    common = Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = _load(module)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=HelpFormatter, parents=[common])
        if command is None or name == command:
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _request=getattr(mod, "REQUEST", None))
    return parser


def _command_of(argv: list[str]) -> str:
    """The subcommand named on the command line ('' if none: only top-level options)."""
    for token in argv:
        if not token.startswith("-"):    # the top-level options take no value
            return token
    return ""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by a SIGTERM: handled like Ctrl-C (exit 128 + 15)."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a command runs, SIGTERM unwinds like Ctrl-C: finished work is kept, workers stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _output_closed() -> bool:
    """Whether stdout or stderr is a pipe whose reader has gone (poll reports an error on it)."""
    import select
    if not hasattr(select, "poll"):
        return False
    for stream in (sys.stdout, sys.stderr):
        try:
            poller = select.poll()
            poller.register(stream.fileno(), select.POLLOUT)
            if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
                return True
        except (AttributeError, OSError, ValueError):
            continue
    return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command_of(sys.argv[1:] if argv is None else list(argv)))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        # SIGTERM unwinds like Ctrl-C; both also stop a native solver call (CP-SAT, Gurobi) that
        # would otherwise keep the handler from running until its time limit
        with _sigterm_as_interrupt(), stop_native_calls_on_signals():
            # the command's request: the one reading of the flags, every check between them
            request = args._request.from_args(args) if args._request is not None else args
            return int(args._run(request) or 0)
    except UserError as exc:     # messages quote names and strings from files: never a raw control character
        print(f"error: {escape(exc, keep_newlines=True)}", file=sys.stderr)
        return exc.exit_code
    except IncompleteRun as exc:
        print(f"error: {escape(exc, keep_newlines=True)}", file=sys.stderr)
        return exc.exit_code
    except CertificateViolation as exc:
        print(f"BUG: {escape(exc, keep_newlines=True)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        if not _output_closed():  # some other pipe broke (a worker's, say): not ours to hide
            raise
        # the reader of our output went away (`| head`): stop quietly, as other CLI tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 128 + int(signal.SIGPIPE)
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        # a write outside the run-folder writer (which names its file itself) ran out of space
        print(f"error: {disk_full_message(exc.filename or 'a file', 0, exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        if args.command == "approximate" and hasattr(exc, "overwrite_stage"):
            # an --overwrite: the old run is unchanged; the new one's finished batches are staged
            stage = exc.overwrite_stage
            print(f"interrupted ({signal.Signals(signum).name}); the old run is unchanged; " +
                  (f"finished work is kept in {escape(stage)} (run the same command again to continue it)"
                   if stage is not None else "no batch of the new run had finished, nothing of it is kept"),
                  file=sys.stderr)
        elif args.command == "approximate":
            print(f"interrupted ({signal.Signals(signum).name}); finished work is kept in the run folder "
                  "(use --resume)", file=sys.stderr)
        else:           # only approximate can resume; the others keep nothing half-done
            print(f"interrupted ({signal.Signals(signum).name}); the command did not complete: run it again",
                  file=sys.stderr)
        return 128 + int(signum)


if __name__ == "__main__":
    sys.exit(main())
