"""The IPython extension: ``%%parmap``, ``%parmap`` and ``%parmap_pool`` (layer: magics).

``%load_ext ipyparmap`` registers the `Parmap` magics. The run options' flags and
their traitlets config (``%config Parmap.workers = 4`` or ``c.Parmap.workers = 4`` in a
profile) are generated from the options table (``ipyparmap.magics.flags``);
``magic_arguments`` turns the flags into ``%%parmap?`` help and argparse errors into
``UsageError``.

Everything that can be wrong with an invocation is checked before any work starts:
the option values, TARGET, EXPR (evaluated in the user namespace), and the body
(compiled in the kernel). Each such mistake is shown as one line that names it and the
fix, never a traceback through this module: a `UsageError` for the magic's syntax and
options and for a body that does not compile (with the body's line, in the cell's own
``In[N]``), and for a wrong EXPR or FUNC the Python error a plain loop would give
(``TypeError``, ``NameError``), made to render as one line in IPython (`one_line`).
An exception raised by the user's own code while EXPR is evaluated keeps its traceback,
starting at the cell (this module's frames are hidden).
"""

from __future__ import annotations

import difflib
import io
import sys
import tokenize
import warnings
from typing import Any

import traitlets
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ipyparmap import api
from ipyparmap.errors import ParmapError
from ipyparmap.magics import flags
from ipyparmap.magics.cellcode import (
    CELL_FUNCTION,
    CellError,
    check_target,
    compile_body,
    is_identifier,
    options_start,
    split_func_expr,
    split_line,
)
from ipyparmap.options import OPTIONS, SETTINGS, describe


@magics_class
class Parmap(Magics):
    """Parallel map magics. Configure defaults with ``%config Parmap.<name> = value``."""

    # The %config traits (workers, errors, timeout...): the class body's namespace is a
    # plain dict, and traitlets' metaclass sees what is put in it like written-out traits.
    # Parmap.prewarm and the other settings (options.SETTINGS) are traits too, but only
    # of the magics: they are not published as run defaults.
    locals().update(flags.config_traits(OPTIONS + SETTINGS))
    _check_config = flags.config_validator(OPTIONS + SETTINGS)
    last_results = None  # the Results of the last run, for %parmap_report

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self._publish_defaults()

    # The traits are the defaults of pm.parmap, pm.imap and pm.parmap_async too, in this
    # kernel: published to the API (which never imports IPython) now and at each change.
    @traitlets.observe(*flags.traited())
    def _config_changed(self, change) -> None:
        self._publish_defaults()

    def _publish_defaults(self) -> None:
        api.configure_defaults(flags.configured_defaults(self))

    # ---------------------------------------------------------------------- %%parmap
    @magic_arguments()
    @argument(
        "-o",
        "--out",
        metavar="NAME",
        help="Also bind the Results to NAME (kept on failure and interrupt).",
    )
    @flags.option_arguments()
    @argument("--report", action="store_true", help="Show the run's report (where the time "
              "went, failures, timeline) after it.")  # fmt: skip
    @argument("--bg", action="store_true", help="Run in the background: the cell returns "
              "a Run at once; -o NAME is bound when it ends.")  # fmt: skip
    @argument("--threads", nargs="?", const="", metavar="N", help="Run in threads of the "
              "kernel (I/O-bound work): --backend threads, N of them if given.")  # fmt: skip
    @line_cell_magic
    def parmap(self, line: str, cell: str | None = None):
        """Run the cell body for every item of EXPR, in parallel worker processes.

        Cell form::

            %%parmap TARGET in EXPR [options]
            BODY

        TARGET (any assignment target, e.g. ``a, b``) is bound to each item of EXPR
        (evaluated in the notebook namespace). The value of BODY's last expression is the
        item's result (``return value`` works too). Names BODY assigns stay local to the
        item; free names (data, functions, classes, modules from earlier cells) are sent
        to the workers by value. The Results is the cell's value; a trailing ``;`` hides
        it. Options may stand before TARGET or after EXPR.

        Line form::

            res = %parmap FUNC EXPR [options]
        """
        __tracebackhide__ = True  # IPython shows the user's frames, not the magic's
        if cell is None:
            return self._run_line(line)
        return self._run_cell(line, cell)

    # ---------------------------------------------------------------------- %parmap_report
    @magic_arguments()
    @argument("name", nargs="?", help="A Results variable (default: the last %%parmap run).")
    @line_magic
    def parmap_report(self, line: str):
        """Show a run's report: where the time went, its failures and its timeline."""
        args = self.parmap_report.parser.parse_argstring(line)
        name = args.name
        results = self.last_results if name is None else self._evaluate(name, "NAME")
        if results is None:
            raise UsageError("no %%parmap run yet in this session: nothing to report")
        if not hasattr(results, "report"):
            raise UsageError(f"{args.name} is not a Results (it is {describe(results)})")
        return results.report()

    # ---------------------------------------------------------------------- %parmap_pool
    @magic_arguments()
    @argument("action", nargs="?", default="show", choices=["show", "restart", "shutdown"],
              help="show (default), restart or shutdown the warm worker pool.")  # fmt: skip
    @argument("--force", action="store_true", help="Restart even while a run uses the pool.")
    @line_magic
    def parmap_pool(self, line: str) -> None:
        """Show the warm worker pool (PIDs, state, memory), or restart / shut it down."""
        args = self.parmap_pool.parser.parse_argstring(line)
        from ipyparmap.process.pool import default_pool

        pool = default_pool()
        if args.action == "shutdown":
            api.shutdown()
            print("worker pool stopped")
            return
        if args.action == "restart":
            busy = [w for w, state in pool.workers() if state == "busy"]
            if busy and not args.force:
                raise UsageError(
                    f"a run is using {len(busy)} workers; wait for it or cancel it first, "
                    "or use %parmap_pool restart --force"
                )
            api.shutdown()
            from ipyparmap.process.resources import resolve_workers, thread_limits

            count = resolve_workers(self.workers)
            pool = default_pool()
            pool.release(pool.acquire(count, thread_limits(count)))
            print(f"worker pool restarted with {count} workers")
        print(_pool_table(pool))

    # ---------------------------------------------------------------------- internals
    def _run_cell(self, line: str, cell: str):
        __tracebackhide__ = True
        try:
            split = split_line(line)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        head, unknown = self.parmap.parser.parse_argstring(split.head, partial=True)
        _reject_unknown_options(unknown)
        target = " ".join(unknown)
        args = _merge(head, _parse_options(self.parmap.parser, split.options))
        try:
            check_target(target)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        settings, out = self._settings(args)
        number = self._cell_number()
        source = f"%%parmap {line}\n{cell}"
        filename = self.shell.compile.cache(source, number)
        iterable = self._evaluate(split.expr, "EXPR", filename)
        _check_iterable(iterable, split.expr, "%%parmap x in range(5)")
        try:
            compiled = compile_body(target, cell, filename)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        except SyntaxError as exc:  # IPython would show it with the magic's frames
            raise UsageError(_syntax_message(exc, number)) from exc
        if compiled.global_names:
            names = ", ".join(compiled.global_names)
            warnings.warn(
                f"%%parmap: the body assigns globals ({names}); each worker changes its own "
                "copy, and the changes do not reach the notebook",
                stacklevel=2,
            )
        namespace: dict[str, Any] = {}
        exec(compiled.code, self.shell.user_ns, namespace)  # defines the cell's function
        func = namespace[CELL_FUNCTION]
        results = self._map(func, iterable, settings, out, args.bg, args.report)
        return None if _ends_with_semicolon(cell) else results

    def _run_line(self, line: str):
        __tracebackhide__ = True
        cut = options_start(line)
        head, options = line[:cut], line[cut:]
        args = _parse_options(self.parmap.parser, options)
        try:
            func_text, expr_text = split_func_expr(head)
        except CellError as exc:
            raise UsageError(str(exc)) from None
        settings, out = self._settings(args)
        func = self._evaluate(func_text, "FUNC")
        if not callable(func):
            raise one_line(
                TypeError(
                    f"{func_text} is not callable (it is {describe(func)}): %parmap FUNC EXPR "
                    "maps a function over EXPR, e.g. res = %parmap len words"
                )
            )
        iterable = self._evaluate(expr_text, "EXPR")
        _check_iterable(iterable, expr_text, "res = %parmap f range(5)")
        return self._map(func, iterable, settings, out, args.bg, args.report)

    def _map(self, func, iterable, settings: dict, out: str | None, background: bool = False,
             report: bool = False):  # fmt: skip
        __tracebackhide__ = True
        try:
            return self._start(func, iterable, settings, out, background, report)
        except (TypeError, ValueError) as exc:
            if _raised_by_the_call_checks(exc):  # FUNC's arity, an async FUNC...: a mistake
                raise one_line(exc) from None
            raise

    def _start(self, func, iterable, settings: dict, out: str | None, background: bool,
               report: bool):  # fmt: skip
        __tracebackhide__ = True
        if background:
            user_ns = self.shell.user_ns

            def bind(results) -> None:  # runs in the Run's thread when it ends
                self.last_results = results
                if out is not None:
                    user_ns[out] = results

            return api.parmap_async(func, iterable, on_finish=bind, **settings)
        try:
            results = api.parmap(func, iterable, **settings)
        except BaseException as exc:
            partial = getattr(exc, "results", None)
            if partial is not None:
                self.last_results = partial
            if out is not None and partial is not None:
                self.shell.user_ns[out] = partial
                if isinstance(exc, ParmapError):
                    exc.bound_as = out
            raise
        self.last_results = results
        if out is not None:
            self.shell.user_ns[out] = results
        if report:
            from IPython.display import display

            display(results.report())
        return results

    def _evaluate(self, text: str, role: str, filename: str | None = None) -> Any:
        """Evaluate EXPR or FUNC in the notebook's namespace. ``filename`` (the cell's, as
        cached) makes a traceback through the user's code start at the cell's line."""
        __tracebackhide__ = True
        shell = self.shell
        try:
            code = compile(text.strip(), filename or "<parmap EXPR>", "eval")
        except SyntaxError:  # split_line only hands over what parses; be safe
            raise UsageError(f"the {role} of %parmap is not an expression: {text!r}") from None
        try:
            with shell.builtin_trap:  # as shell.ev does
                return eval(code, shell.user_global_ns, shell.user_ns)
        except NameError as exc:
            if exc.__traceback__.tb_next is None or exc.__traceback__.tb_next.tb_next is None:
                # the name is missing in EXPR itself (not deeper, in the user's code)
                hint = _did_you_mean(exc.name, shell.user_ns)
                raise one_line(
                    NameError(
                        f"{exc} (in the {role} of %parmap: {text!r}): define it in an "
                        f"earlier cell{hint}",
                        name=exc.name,
                    )
                ) from None
            raise

    def _cell_number(self) -> int:
        """The ``N`` of ``In[N]``, the cell running this magic.

        IPython names each cell's code after its number; the innermost frame running such
        code is this cell's. (``shell.execution_count`` already counts the next cell while
        a cell runs, since IPython 9.) Called from elsewhere: the execution count.
        """
        names = getattr(self.shell.compile, "_filename_map", None) or {}
        frame = sys._getframe(1)
        while frame is not None:
            number = names.get(frame.f_code.co_filename)
            if number is not None:
                return number
            frame = frame.f_back
        return self.shell.execution_count

    def _settings(self, args) -> tuple[dict, str | None]:
        """Validated keyword arguments for api.parmap, and the -o name."""
        out = args.out
        if out is not None and not is_identifier(out):
            raise UsageError(f"-o needs a Python identifier, got {out!r}")
        try:
            settings = flags.run_settings(args, self)
        except (TypeError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        if args.threads is not None:
            _use_threads(settings, args.threads, given_workers=args.workers)
        # What the options' checks cannot know: the CPUs here, an installed Dask.
        if settings["workers"] is not None and settings["backend"] != "threads":
            from ipyparmap.process.resources import resolve_workers

            try:
                resolve_workers(settings["workers"])
            except ValueError as exc:
                raise UsageError(f"-w/--workers: {exc}") from None
        if settings["backend"] == "dask":
            from ipyparmap.engine.executor import resolve_backend

            try:
                resolve_backend("dask")
            except ValueError as exc:
                raise UsageError(f"--backend dask: {exc}") from None
        return settings, out


# A typo such as --worker must be an error, not a silent abbreviation of --workers.
Parmap.parmap.parser.allow_abbrev = False
# What a "did you mean" may suggest.
_OPTION_NAMES = tuple(
    name
    for action in Parmap.parmap.parser._actions
    for name in action.option_strings
    if name.startswith("--")
)


# ---------------------------------------------------------------------------- helpers
def _parse_options(parser, text: str):
    """Parse option text; unknown words get a one-line error with a "did you mean"."""
    args, unknown = parser.parse_argstring(text, partial=True)
    _reject_unknown_options(unknown)
    if unknown:
        raise UsageError(f"unexpected text after the options: {' '.join(unknown)!r}")
    return args


def _merge(head, tail):
    """Options given before TARGET and after EXPR; the later ones win."""
    for name, value in vars(tail).items():
        if value not in (None, False):
            setattr(head, name, value)
    return head


def _reject_unknown_options(words: list[str]) -> None:
    for word in words:
        if word.startswith("-") and len(word) > 1 and not word[1].isdigit():
            name = word.split("=", 1)[0]
            close = difflib.get_close_matches(name, _OPTION_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unrecognized option {name}{hint}")


class OneLine:
    """Mixed into a Python error raised for a user's mistake: IPython shows it as one
    line (``TypeError: ...``), not a traceback through the magic's code."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m\x1b[1m{type(self).__name__}\x1b[0m: {self}"]

    def __reduce__(self):  # pickled as the plain error
        return (type(self).__mro__[2], self.args)


_one_line_types: dict[type, type] = {}


def one_line(error: BaseException) -> BaseException:
    """``error`` as an instance of its type that IPython shows as one line; still an
    instance of the same type (``except TypeError`` catches it), with the same message."""
    kind = type(error)
    cls = _one_line_types.get(kind)
    if cls is None:
        namespace = {"__module__": kind.__module__, "__qualname__": kind.__qualname__}
        cls = _one_line_types[kind] = type(kind.__name__, (OneLine, kind), namespace)
    made = cls(*error.args)
    if isinstance(error, NameError):
        made.name = error.name
    return made


def _raised_by_the_call_checks(error: BaseException) -> bool:
    """Whether the API's checks of the call raised ``error`` (before anything ran), not
    the user's code: the innermost frame is the API's or the options' own."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__") if tb is not None else None
    return module in ("ipyparmap.api", "ipyparmap.options")


def _did_you_mean(name: str | None, namespace: dict) -> str:
    if not name:
        return ""
    names = [key for key in namespace if not key.startswith("_")]
    close = difflib.get_close_matches(name, names, n=1)
    return f", or did you mean {close[0]!r}?" if close else ""


def _syntax_message(error: SyntaxError, number: int) -> str:
    """A body's SyntaxError as IPython words one in a cell: where, what, the line."""
    where = f"Cell In[{number}], line {error.lineno}" if error.lineno else f"Cell In[{number}]"
    lines = [f"syntax error in the %%parmap body ({where}): {error.msg}"]
    text = error.text
    if not text and error.filename and error.lineno:  # raised compiling the body's tree
        import linecache

        text = linecache.getline(error.filename, error.lineno)
    text = (text or "").rstrip("\n")
    if text.strip():
        indent = len(text) - len(text.lstrip())
        lines.append(f"    {text.strip()}")
        if error.offset:
            end = error.end_offset if error.end_offset and error.end_offset > error.offset else 0
            width = max(1, end - error.offset) if end and error.end_lineno == error.lineno else 1
            lines.append("    " + " " * max(0, error.offset - 1 - indent) + "^" * width)
    return "\n".join(lines)


def _check_iterable(value: Any, expr: str, example: str) -> None:
    try:
        iter(value)
    except TypeError:
        raise one_line(
            TypeError(
                f"EXPR {expr!r} is not iterable (got {type(value).__name__}): give a list, a "
                f"range, a generator or another iterable, e.g. {example}"
            )
        ) from None
    if isinstance(value, str):
        warnings.warn(
            f"%parmap: EXPR {expr!r} is a string: each item will be one character",
            stacklevel=3,
        )
    elif type(value).__name__ == "DataFrame":
        warnings.warn(
            "%parmap: iterating a DataFrame yields its column names; use "
            "df.itertuples() or df.iterrows()",
            stacklevel=3,
        )


def _use_threads(settings: dict, count: str, given_workers: str | None) -> None:
    """``--threads [N]``: backend "threads", and N of them if given (over a %config
    default of workers, not over an explicit -w)."""
    if settings["backend"] not in (None, "local", "threads"):
        raise UsageError(f"--threads cannot go with --backend {settings['backend']}: give one")
    settings["backend"] = "threads"
    if count == "":
        return
    if not count.isdigit() or int(count) < 1:
        raise UsageError(f"--threads N needs a positive integer, got {count!r}")
    if given_workers is not None and settings["workers"] != int(count):
        raise UsageError(f"--threads {count} and -w {settings['workers']} disagree: give one")
    settings["workers"] = int(count)


def _ends_with_semicolon(cell: str) -> bool:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(cell).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    for tok in reversed(tokens):
        if tok.type in skip:
            continue
        return tok.type == tokenize.OP and tok.string == ";"
    return False


def _pool_table(pool) -> str:
    from ipyparmap.process.resources import rss_bytes

    rows = pool.workers()
    if not rows:
        return "no worker processes are running (the pool starts on first use)"
    lines = [f"{'PID':>8}  {'state':6}  {'RSS':>9}"]
    for worker, state in rows:
        rss = rss_bytes(worker.pid)
        size = "?" if rss is None else f"{rss / 2**20:.1f} MB"
        lines.append(f"{worker.pid:>8}  {state:6}  {size:>9}")
    return "\n".join(lines)


def _note_modules(result=None) -> None:
    """After each cell: note the local modules the kernel has loaded, and their files
    as they are now (wire/serialize.py `module_table`), so a module imported in one cell
    and edited on disk before the next call still runs as the kernel loaded it."""
    try:
        from ipyparmap.wire.localmodules import module_table

        module_table(check_files=True)
    except Exception:  # never break the user's cell for this
        pass


def load_ipython_extension(ip) -> None:
    ip.register_magics(Parmap)
    ip.events.register("post_run_cell", _note_modules)
    _note_modules()
    _prewarm_after_cell(ip)


def _prewarm_after_cell(ip) -> None:
    """Start the pool once the cell that loads the extension ends (its workers then
    boot while the user writes the next cell), unless ``Parmap.prewarm`` is False by
    then (``%config`` in that very cell counts) or ``pm.shutdown()`` came first."""
    since = api.shutdowns()

    def prewarm(*_) -> None:
        try:
            ip.events.unregister("post_run_cell", prewarm)
        except ValueError:  # unloaded meanwhile
            return
        magics = ip.magics_manager.registry.get("Parmap")
        if magics is None or not magics.prewarm:
            return
        try:
            api.prewarm(since)
        except Exception as exc:  # never break the user's cell for this; the first run
            # starts its workers itself and reports what goes wrong then
            print(f"ipyparmap: could not start the worker pool: {exc}", file=sys.stderr)

    ip.events.register("post_run_cell", prewarm)


def unload_ipython_extension(ip) -> None:
    """Remove the magics and stop the warm workers (nothing outlives the extension);
    ``%config Parmap`` values no longer apply to the API."""
    api.shutdown()
    api.configure_defaults({})
    try:
        ip.events.unregister("post_run_cell", _note_modules)
    except ValueError:  # not registered
        pass
    manager = ip.magics_manager
    for kind, names in (
        ("line", ("parmap", "parmap_pool", "parmap_report")),
        ("cell", ("parmap",)),
    ):
        for name in names:
            manager.magics[kind].pop(name, None)
    instance = manager.registry.pop("Parmap", None)
    if instance is not None and instance in getattr(ip, "configurables", []):
        ip.configurables.remove(instance)
