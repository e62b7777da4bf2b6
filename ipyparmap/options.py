"""The run options, declared once in `OPTIONS`, and their one validator (bottom layer).

Each `Option` holds all there is to know about one run option: its default, its check,
one line of help, how the ``%%parmap`` magic spells it, whether it is a ``%config
Parmap`` trait, and which API functions take it. The `Options` record, `check_options`,
the magic's flags and traits (``ipyparmap.magics.flags``) and the API reference's
parameter table are generated from it, so an option cannot be changed in one place
and forgotten in another.

``parmap``, ``imap``, the magics and the drop-in classes all validate through
`check_options`, so a bad argument gets the same message wherever it is passed, and it
is raised before any worker starts. Workers import this
module: it stays standard library only.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any, NamedTuple

ERRORS_MODES = ("raise", "collect")
PROGRESS_MODES = ("auto", "widget", "text", False)
LOCAL_BACKENDS = (None, "local")


def short_repr(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any, limit: int = 50) -> str:
    """A short, safe description for error messages: ``repr (type)``."""
    return f"{short_repr(value, limit)} ({type(value).__name__})"


class Flag(NamedTuple):
    """How the ``%%parmap`` magic spells an option."""

    names: tuple[str, ...]  # ("-w", "--workers")
    metavar: str | None = None  # the value's name in the help; None: a switch, no value
    parse: Callable[[str], Any] = str  # the text given -> a value for the option's check
    # The magic shows what it was given, the text, and says what the text may be (no None,
    # no objects): "--x must be {accepts}, got 'text'". None: the check's own message.
    accepts: str | None = None
    switch: Any = None  # the option's value when the switch is given
    help: str | None = None  # when the flag says less than the option (--no-progress)

    @property
    def label(self) -> str:
        return "/".join(self.names)

    @property
    def dest(self) -> str:
        return self.names[-1].lstrip("-").replace("-", "_")  # argparse's own choice


API_FUNCTIONS = ("parmap", "imap", "parmap_async")


class Option(NamedTuple):
    """One run option: what the API, the magics and the docs need to know about it."""

    name: str
    default: Any
    check: Callable[[Option, Any, str], Any]  # (option, value, name) -> the value to run with
    accepts: str  # what the API accepts, as the error messages and the docs say it
    help: str  # one line, for the docs, %%parmap? and %config Parmap
    choices: tuple[Any, ...] = ()
    flag: Flag | None = None  # None: the magic has no flag for it
    trait: str | None = None  # the traitlets type of %config Parmap.<name>; None: no trait
    apis: tuple[str, ...] = API_FUNCTIONS

    def validate(self, value: Any, name: str | None = None) -> Any:
        """The value to run with; ``TypeError``/``ValueError`` naming ``name``."""
        if value is None and self.default is None:
            return None  # None is "decide for me" wherever it is the default
        return self.check(self, value, name or self.name)

    def from_text(self, text: str) -> Any:
        """The value of the magic's flag text; ``ValueError`` with a one-line reason."""
        flag = self.flag
        try:
            return self.validate(flag.parse(text), flag.label)
        except (TypeError, ValueError):
            if flag.accepts is None:
                raise  # the check's own words, naming the flag
            # after "one of: a, b" a comma would read as one more choice
            sep = ";" if ":" in flag.accepts else ","
            raise ValueError(f"{flag.label} must be {flag.accepts}{sep} got {text!r}") from None


# ---------------------------------------------------------------------------- checks
def _bad(name: str, accepts: str, value: Any, error: type[Exception] = ValueError) -> Exception:
    shown = short_repr(value)
    if error is TypeError:  # a wrong type: say which, "got '4' (str)"
        shown += f" ({type(value).__name__})"
    return error(f"{name} must be {accepts}, got {shown}")


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but workers=True is a mistake, not "1 worker".
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(least: int, option: Option, value: Any, name: str) -> int:
    if not _is_int(value):
        raise _bad(name, option.accepts, value, TypeError)
    if value < least:
        raise _bad(name, option.accepts, value)
    return value


def _positive_int(option: Option, value: Any, name: str) -> int:
    return _int_at_least(1, option, value, name)


def _non_negative_int(option: Option, value: Any, name: str) -> int:
    return _int_at_least(0, option, value, name)


def _choice(option: Option, value: Any, name: str) -> Any:
    # The type first: 0 == False, and an array's == is not a bool.
    if any(isinstance(value, type(c)) and value == c for c in option.choices):
        return value
    raise _bad(name, option.accepts, value)


def _progress(option: Option, value: Any, name: str) -> Any:
    return "auto" if value is True else _choice(option, value, name)


def _seconds(option: Option, value: Any, name: str) -> float | None:
    """A positive, finite number of seconds; ``inf`` means no limit, like None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, option.accepts, value, TypeError)
    if math.isnan(value) or value <= 0:
        raise _bad(name, option.accepts, value)
    return None if math.isinf(value) else float(value)


def _bool(option: Option, value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(name, option.accepts, value, TypeError)
    return value


def _backend(option: Option, value: Any, name: str) -> Any:
    # A name must be known now; an object (a Client, an Executor) is checked when the
    # run resolves it.
    if isinstance(value, str) and value not in ("local", "threads", "dask"):
        raise _bad(name, option.accepts, value)
    return value


def _size(option: Option, value: Any, name: str) -> int | None:
    return parse_memory(value, name)


def _int_text(text: str) -> int:
    """``"3"`` or ``"+3"``; not ``"2.5"``, nor ``"03"`` or ``"1_000"`` (int() takes those)."""
    value = int(text)
    if str(value) != text.strip().lstrip("+"):
        raise ValueError(text)
    return value


# ---------------------------------------------------------------------------- the table
OPTIONS: tuple[Option, ...] = (
    Option(
        name="workers",
        default=None,
        check=_positive_int,
        accepts="a positive integer or None",
        help="Worker processes (default: every usable CPU).",
        flag=Flag(("-w", "--workers"), "N", _int_text, accepts="a positive integer"),
        trait="Integer",
    ),
    Option(
        name="chunksize",
        default=None,
        check=_positive_int,
        accepts="a positive integer or None",
        help="Items per message (default: adaptive).",
        flag=Flag(("--chunksize",), "N", _int_text, accepts="a positive integer"),
        trait="Integer",
    ),
    Option(
        name="errors",
        default="raise",
        check=_choice,
        accepts="'raise' or 'collect'",
        help="raise (default): stop at the first failure; collect: record failures and go on.",
        choices=ERRORS_MODES,
        flag=Flag(("--errors",), "MODE", accepts="one of: raise, collect"),
        trait="Enum",
    ),
    Option(
        name="timeout",
        default=None,
        check=_seconds,
        accepts="a positive number of seconds or None",
        help="Seconds one item may run; its worker is killed (default: no limit).",
        flag=Flag(("--timeout",), "S", float, accepts="a positive number of seconds"),
        trait="Float",
    ),
    Option(
        name="retries",
        default=0,
        check=_non_negative_int,
        accepts="a non-negative integer",
        help="Extra attempts for an item that failed.",
        flag=Flag(("--retries",), "N", _int_text, accepts="a non-negative integer"),
        trait="Integer",
    ),
    Option(
        name="progress",
        default="auto",
        check=_progress,
        accepts="'auto', 'widget', 'text' or False",
        help="What shows the run: auto (default), widget, text, or False for nothing.",
        choices=PROGRESS_MODES,
        flag=Flag(("--no-progress",), switch=False, help="Show no progress bar or panel."),
        trait="Enum",
    ),
    Option(
        name="star",
        default=False,
        check=_bool,
        accepts="a bool",
        help="Call func(*item), like itertools.starmap.",
    ),
    Option(
        name="backend",
        default=None,
        check=_backend,
        accepts="None, 'local', 'threads', 'dask', a distributed.Client or a "
        "concurrent.futures.Executor",
        help="Where items run: the warm local pool of processes (default), threads of "
        "this process (I/O-bound work), the current Dask client, or the given Client or "
        "Executor.",
        flag=Flag(
            ("--backend",),
            "NAME",
            accepts="local, threads or dask",
            help="local (default), threads or dask.",
        ),
    ),
    Option(
        name="ordered",
        default=True,
        check=_bool,
        accepts="a bool",
        help="Yield in input order (default), or as items finish.",
        apis=("imap",),
    ),
    Option(
        name="max_memory",
        default=None,
        check=_size,
        accepts="bytes (int) or a size like '2GB'",
        help="A worker over this memory (RSS), e.g. 2GB, is stopped during an item (which "
        "fails as 'memory') or replaced after one (local pool only).",
        flag=Flag(("--max-memory",), "SIZE"),
        trait="Unicode",
    ),
)

BY_NAME = {option.name: option for option in OPTIONS}

#: Settings of the magics that are not run options (no API function takes them): only
#: ``%config Parmap.<name>`` traits, declared here beside the run options they sit with.
SETTINGS: tuple[Option, ...] = (
    Option(
        name="prewarm",
        default=True,
        check=_bool,
        accepts="a bool",
        help="Start the worker pool when the extension loads (when its cell ends), so the "
        "first run finds its workers booted.",
        trait="Bool",
        apis=(),
    ),
)


def options_record(table: tuple[Option, ...] = OPTIONS) -> type:
    """A record type with one field per option (a namedtuple: workers import it, and a
    dataclass would import the dataclasses machinery there for nothing)."""
    record = collections.namedtuple(
        "Options",
        [option.name for option in table],
        defaults=[option.default for option in table],
        module=__name__,
    )
    record.__doc__ = "Validated options of one run, one field per entry of OPTIONS."
    return record


Options = options_record()


def validated(table: tuple[Option, ...], record: type, values: dict[str, Any]) -> Any:
    """``record`` holding each option of ``table`` checked (its default where not given)."""
    names = {option.name for option in table}
    for name in values:
        if name not in names:
            raise TypeError(f"check_options() got an unexpected keyword argument {name!r}")
    return record(*(option.validate(values.get(option.name, option.default)) for option in table))


#: Types whose values can be remembered as checked: immutable, compared by value.
_PLAIN = frozenset({int, float, str, bool, type(None)})
_last_checked: tuple = (None, None)  # (the values of the last call, their record)


def check_options(**values: Any) -> Options:
    """Validate run options; raise ``TypeError``/``ValueError`` naming the culprit.

    The same plain values as the last call give the same record without checking them
    again (~10 us of a warm small call); types are part of the comparison (``1`` is a
    worker count, ``True`` is refused).
    """
    global _last_checked
    plain = all(type(value) in _PLAIN for value in values.values())
    key = tuple((name, type(value), value) for name, value in values.items()) if plain else None
    if plain and _last_checked[0] == key:
        return _last_checked[1]
    record = validated(OPTIONS, Options, values)
    if plain:
        _last_checked = (key, record)
    return record


def markdown_table(table: tuple[Option, ...] = OPTIONS) -> str:
    """The API reference's parameter table (docs/api.md holds a copy a test compares)."""
    rows = ["| parameter | default | accepts | meaning |", "| --- | --- | --- | --- |"]
    for option in table:
        meaning = option.help
        if option.apis != API_FUNCTIONS:
            meaning += " Only for " + ", ".join(f"`{api}`" for api in option.apis) + "."
        cells = (f"`{option.name}`", f"`{option.default!r}`", option.accepts, meaning)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_memory(value: Any, name: str = "max_memory") -> int | None:
    """``None``, a number of bytes, or a string like ``"2GB"``, ``"512 MiB"``, ``"1.5g"``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be bytes (int) or a size like '2GB', got {value!r}")
    if isinstance(value, (int, float)):
        size = float(value)
    elif isinstance(value, str):
        import re

        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", value)
        if match is None:
            raise ValueError(f"{name} must be a size like '2GB' or '512MB', got {value!r}")
        size = float(match.group(1)) * _UNITS[match.group(2).upper()]
    else:
        raise TypeError(
            f"{name} must be bytes (int) or a size like '2GB', got {type(value).__name__}"
        )
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"{name} must be a positive size, got {value!r}")
    return int(size)
