"""%%parmap / %parmap / %parmap_pool through a real InteractiveShell."""

from __future__ import annotations

import warnings

import helpers
import pytest
from conftest import children, workers

import ipyparmap as pm

IPython = pytest.importorskip("IPython")
from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipyparmap")
    yield ip
    ip.run_line_magic("unload_ext", "ipyparmap")


@pytest.fixture
def ip(shell):
    shell.user_ns.update({"helpers": helpers})
    shell.run_line_magic("config", "Parmap.workers = 2")
    yield shell
    for name in ("res", "items", "data", "scale", "Point", "points", "out", "xs", "ys"):
        shell.user_ns.pop(name, None)
    shell.run_line_magic("config", "Parmap.workers = None")
    shell.run_line_magic("config", "Parmap.errors = 'raise'")


def cell(ip, line: str, body: str):
    return ip.run_cell_magic("parmap", line, body)


def test_cell_body_is_the_function(ip):
    ip.user_ns["items"] = [1, 2, 3]
    res = cell(ip, "x in items", "y = x * 10\ny + 1\n")
    assert isinstance(res, pm.Results) and res == [11, 21, 31]
    assert "y" not in ip.user_ns  # names the body assigns stay local


def test_tuple_targets_and_return(ip):
    ip.user_ns.update(xs=[1, 2], ys=[10, 20])
    assert cell(ip, "a, b in zip(xs, ys)", "a + b") == [11, 22]
    assert cell(ip, "(i, (a, b)) in enumerate(zip(xs, ys))", "return i * 100 + a * b") == [10, 140]


def test_last_statement_not_an_expression_gives_none(ip):
    assert cell(ip, "x in range(3)", "y = x") == [None, None, None]


def test_free_names_come_from_earlier_cells(ip):
    ip.run_cell(
        "import math\n"
        "scale = 3\n"
        "class Point:\n"
        "    def __init__(self, v): self.v = v\n"
        "def helper(v):\n"
        "    return Point(math.floor(v * scale))\n"
    )
    res = cell(ip, "x in [0.5, 1.5]", "helper(x)")
    assert [p.v for p in res] == [1, 4]
    assert all(type(p) is ip.user_ns["Point"] for p in res)


def test_options_before_target_and_after_expr(ip):
    res = cell(ip, "-o out x in range(-3, 3) -w 1 --errors collect", "x * 2")
    assert res == [-6, -4, -2, 0, 2, 4]
    assert ip.user_ns["out"] is res
    assert res.stats.workers == 1


def test_option_like_text_inside_expr_is_not_an_option(ip):
    res = cell(ip, 'x in ["-w", "3"] -w 2', "x")
    assert res == ["-w", "3"] and res.stats.workers == 2


def test_trailing_semicolon_hides_the_value_but_o_binds(ip):
    result = ip.run_cell("%%parmap -o out x in range(3)\nx * 2;\n")
    assert result.success and result.result is None
    assert ip.user_ns["out"] == [0, 2, 4]
    result = ip.run_cell("%%parmap x in range(3)\nx * 2\n")
    assert result.result == [0, 2, 4]  # shown as Out[n]


def test_line_magic(ip):
    ip.user_ns["items"] = [1, 2, 3]
    res = ip.run_line_magic("parmap", "helpers.square items -w 2")
    assert res == [1, 4, 9]
    ip.run_cell("res = %parmap lambda x: x + 1 items")
    assert ip.user_ns["res"] == [2, 3, 4]


def test_worker_output_is_shown_per_item_and_kept(ip, capsys):
    res = cell(ip, "x in range(3)", "print('hello', x)\nx")
    out = capsys.readouterr().out
    for i in range(3):
        assert f"[{i}] hello {i}\n" in out
        assert res.outputs[i].stdout == f"hello {i}\n"


def test_failure_binds_partial_results_and_renders_the_cell_line(ip):
    result = ip.run_cell(
        "%%parmap -o out x in range(6)\nif x == 3:\n    raise ValueError(f'bad {x}')\nx\n"
    )
    error = result.error_in_exec
    assert isinstance(error, pm.TaskError)
    partial = ip.user_ns["out"]
    assert isinstance(partial, pm.Results) and partial[3] is error.failure
    rendered = "\n".join(error._render_traceback_())
    assert "item 3 (3)" in rendered
    assert "raise ValueError(f'bad {x}')" in rendered  # the notebook cell's source line
    assert "in out" in rendered  # says where the partial results are
    assert "ValueError: bad 3" in rendered


def test_collect_mode_and_unpacking_failure_message(ip):
    ip.run_line_magic("config", "Parmap.errors = 'collect'")
    res = cell(ip, "a, b in [1, (2, 3)]", "a + b")
    assert res[1] == 5
    assert "cannot unpack non-iterable int object into 'a, b'" in str(res[0].exception)


def test_global_statement_warns(ip):
    ip.user_ns["counter"] = 0
    with pytest.warns(UserWarning, match="do not reach the notebook"):
        cell(ip, "x in range(2)", "global counter\ncounter += 1\ncounter")
    assert ip.user_ns["counter"] == 0


def test_string_and_dataframe_like_exprs_warn(ip):
    with pytest.warns(UserWarning, match="each item will be one character"):
        assert cell(ip, "c in 'ab'", "c.upper()") == ["A", "B"]


# -- misuse: each gets a one-line UsageError ------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, body, message",
    [
        ("", "x", "%%parmap needs 'TARGET in EXPR', e.g. %%parmap x in items"),
        ("x items", "x", "%%parmap needs 'TARGET in EXPR'"),
        ("x in", "x", "missing EXPR after 'in'"),
        ("1 in items", "x", "'1' is not an assignment target"),
        ("f() in items", "x", "'f()' is not an assignment target"),
        ("x in range(3) -w 0", "x", "-w/--workers must be a positive integer, got '0'"),
        ("x in range(3) -w -1", "x", "-w/--workers must be a positive integer, got '-1'"),
        ("x in range(3) -w two", "x", "-w/--workers must be a positive integer, got 'two'"),
        ("x in range(3) -w 2.5", "x", "-w/--workers must be a positive integer, got '2.5'"),
        ("x in range(3) -w 100000", "x", "usable CPUs"),
        ("x in range(3) --chunksize 0", "x", "--chunksize must be a positive integer"),
        ("x in range(3) --chunksize 1.5", "x", "--chunksize must be a positive integer"),
        ("x in range(3) --errors ignore", "x", "--errors must be one of: raise, collect"),
        ("x in range(3) --timeout -1", "x", "--timeout must be a positive number of seconds"),
        ("x in range(3) --timeout 0", "x", "--timeout must be a positive number of seconds"),
        ("x in range(3) --timeout soon", "x", "--timeout must be a positive number of seconds"),
        ("x in range(3) --timeout nan", "x", "--timeout must be a positive number of seconds"),
        ("x in range(3) --retries -1", "x", "--retries must be a non-negative integer"),
        ("x in range(3) --retries 1.5", "x", "--retries must be a non-negative integer"),
        ("x in range(3) -o", "x", "expected one argument"),
        ("x in range(3) -o 1abc", "x", "-o needs a Python identifier"),
        ("x in range(3) -o a-b", "x", "-o needs a Python identifier"),
        ("x in range(3) -o class", "x", "-o needs a Python identifier"),
        ("x in range(3) --foo", "x", "unrecognized option --foo"),
        ("x in range(3) --worker 2", "x", "unrecognized option --worker (did you mean --workers?)"),
        ("--worker 2 x in range(3)", "x", "unrecognized option --worker (did you mean --workers?)"),
        ("x in range(3) --backend spark", "x", "--backend must be local, threads or dask"),
        ("x in range(3) --threads two", "x", "--threads N needs a positive integer, got 'two'"),
        ("x in range(3) --threads 0", "x", "--threads N needs a positive integer"),
        ("x in range(3) --threads 4 -w 2", "x", "--threads 4 and -w 2 disagree"),
        ("x in range(3) --threads --backend dask", "x", "--threads cannot go with --backend"),
        ("x in range(3)", "", "the cell body is empty"),
        ("x in range(3)", "# only a comment\n", "the cell body is empty"),
        ("x in range(3)", "yield x", "'yield' is not allowed"),
        ("x in range(3)", "await g(x)", "async bodies"),
    ],
)
def test_misuse_is_a_usage_error_and_starts_nothing(ip, line, body, message):
    pm.shutdown()
    with pytest.raises(UsageError) as info:
        cell(ip, line, body)
    assert message in str(info.value)
    assert children() == []


def test_threads_flag_runs_the_body_in_threads_of_the_kernel(ip):
    import threading

    ip.user_ns["threading"] = threading
    res = cell(ip, "x in range(4) --threads 3 -o names", "threading.current_thread().name")
    assert all(name.startswith("ipyparmap-thread-") for name in res)
    assert res.stats.workers == 3 and ip.user_ns["names"] is res
    assert all(
        n.startswith("ipyparmap-thread-")
        for n in cell(ip, "x in range(2) --threads", "threading.current_thread().name")
    )


def test_undefined_name_in_expr_is_the_users_name_error(ip):
    with pytest.raises(NameError, match=r"undefined_name.*in the EXPR of %parmap"):
        cell(ip, "x in undefined_name", "x")


def test_non_iterable_expr(ip):
    with pytest.raises(TypeError, match=r"EXPR '5' is not iterable \(got int\)"):
        cell(ip, "x in 5", "x")


def test_syntax_error_points_at_the_body_line(ip):
    # a UsageError (one line in IPython, no frames of the magic), the SyntaxError its cause
    with pytest.raises(
        UsageError,
        match=r"syntax error in the %%parmap body \(Cell In\[\d+\], line 3\): '\(' was never closed",
    ):
        cell(ip, "x in range(3)", "y = 1\nz = (\n")
    assert info_cause_line(ip, "x in range(3)", "y = 1\nz = (\n") == 3  # line 1: the magic


def info_cause_line(ip, line, body):
    try:
        cell(ip, line, body)
    except UsageError as error:
        assert isinstance(error.__cause__, SyntaxError)
        return error.__cause__.lineno
    raise AssertionError("no UsageError")


def test_line_magic_misuse(ip):
    with pytest.raises(UsageError, match="%parmap needs FUNC and EXPR"):
        ip.run_line_magic("parmap", "helpers.square")
    with pytest.raises(TypeError, match="42 is not callable"):
        ip.run_line_magic("parmap", "42 [1, 2]")
    with pytest.raises(TypeError, match="cannot take one positional argument"):
        ip.run_line_magic("parmap", "lambda: 1 [1, 2]")


def test_config_traits_are_validated(ip):
    from traitlets import TraitError

    magics = ip.magics_manager.registry["Parmap"]
    for value in ("four", -2):
        with pytest.raises(TraitError, match="workers"):
            magics.workers = value


def test_config_traits_come_from_the_options_table(ip):
    import traitlets
    from traitlets import TraitError

    from ipyparmap.magics.commands import Parmap
    from ipyparmap.options import OPTIONS, SETTINGS

    traits = Parmap.class_traits(config=True)
    declared = {o.name: o for o in OPTIONS + SETTINGS if o.trait}
    assert set(traits) == set(declared)
    for name, option in declared.items():
        assert traits[name].default_value == option.default, name
        assert isinstance(traits[name], getattr(traitlets, option.trait)), name
    magics = ip.magics_manager.registry["Parmap"]
    # the option's own check, so a value every run would refuse is refused when set
    with pytest.raises(TraitError, match=r"Parmap\.timeout must be a positive number of seconds"):
        magics.timeout = 0
    with pytest.raises(TraitError, match=r"Parmap\.max_memory must be a size like"):
        magics.max_memory = "lots"
    magics.max_memory = "2GB"  # kept as given
    assert magics.max_memory == "2GB"
    magics.max_memory = None


def test_flags_come_from_the_options_table(ip):
    from ipyparmap.magics.commands import Parmap
    from ipyparmap.options import OPTIONS

    spelled = {s for a in Parmap.parmap.parser._actions for s in a.option_strings}
    declared = {name for o in OPTIONS if o.flag for name in o.flag.names}
    assert spelled == declared | {"-o", "--out", "--report", "--bg", "--threads"}


def test_flags_and_config_defaults_reach_the_run(ip):
    ip.run_line_magic("config", "Parmap.retries = 2")
    ip.run_line_magic("config", "Parmap.timeout = 30")
    try:
        magics = ip.magics_manager.registry["Parmap"]
        args = magics.parmap.parser.parse_argstring("--timeout 5 --no-progress --max-memory 1KB")
        settings, out = magics._settings(args)
        assert out is None
        assert settings == {
            "workers": 2,  # %config, set by the fixture
            "chunksize": None,
            "errors": "raise",
            "timeout": 5.0,  # the flag wins
            "retries": 2,
            "progress": False,
            "backend": None,
            "max_memory": 1024,
        }
    finally:
        ip.run_line_magic("config", "Parmap.retries = 0")
        ip.run_line_magic("config", "Parmap.timeout = None")


def test_a_new_option_gets_a_flag_help_and_a_trait():
    from IPython.core.magic_arguments import magic_arguments, parse_argstring
    from traitlets import Integer

    from ipyparmap import options as O
    from ipyparmap.magics import flags

    extra = O.Option(
        name="nice",
        default=0,
        check=O._non_negative_int,
        accepts="a non-negative integer",
        help="Scheduling priority of the workers.",
        flag=O.Flag(("--nice",), "N", O._int_text, accepts="a non-negative integer"),
        trait="Integer",
    )
    table = (*O.OPTIONS, extra)

    @magic_arguments()
    @flags.option_arguments(table)
    def fake(line):
        """A fake magic."""

    assert "--nice N" in fake.__doc__ and "Scheduling priority" in fake.__doc__
    assert "--nice N" in flags.markdown_table(fake.parser, table)
    traits = flags.config_traits(table)
    assert isinstance(traits["nice"], Integer) and traits["nice"].default_value == 0

    class Config:
        nice = 7
        workers = chunksize = timeout = max_memory = None
        errors, retries, progress = "raise", 0, "auto"

    args = parse_argstring(fake, "")
    assert flags.run_settings(args, Config, table)["nice"] == 7
    args = parse_argstring(fake, "--nice 3")
    assert flags.run_settings(args, Config, table)["nice"] == 3
    args = parse_argstring(fake, "--nice -1")
    with pytest.raises(ValueError, match="--nice must be a non-negative integer, got '-1'"):
        flags.run_settings(args, Config, table)


def test_help_is_generated_from_the_options(ip):
    doc = ip.magics_manager.magics["cell"]["parmap"].__doc__
    for option in ("-o NAME", "--workers N", "--timeout S", "--no-progress", "TARGET in EXPR"):
        assert option in doc


def test_parmap_pool_show_restart_shutdown(ip, capsys):
    cell(ip, "x in range(4)", "x")
    ip.run_line_magic("parmap_pool", "")
    shown = capsys.readouterr().out
    assert "PID" in shown and "idle" in shown and "MB" in shown
    ip.run_line_magic("parmap_pool", "restart")
    assert "restarted with 2 workers" in capsys.readouterr().out
    assert len(workers()) == 2
    ip.run_line_magic("parmap_pool", "shutdown")
    assert children() == []
    with pytest.raises(UsageError):
        ip.run_line_magic("parmap_pool", "explode")


def test_load_twice_is_harmless_and_unload_removes(shell):
    shell.run_line_magic("load_ext", "ipyparmap")  # already loaded: no error
    shell.run_line_magic("unload_ext", "ipyparmap")
    assert "parmap" not in shell.magics_manager.magics["cell"]
    assert "parmap_pool" not in shell.magics_manager.magics["line"]
    shell.run_line_magic("load_ext", "ipyparmap")
    assert "parmap" in shell.magics_manager.magics["cell"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shell.run_cell_magic("parmap", "x in range(2)", "x") == [0, 1]
