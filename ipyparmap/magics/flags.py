"""The ``%%parmap`` flags and ``%config Parmap`` traits of the run options (layer: magics).

Generated from ``ipyparmap.options.OPTIONS``: a flag's text and a trait's value go
through the same check as an API argument, so the magic cannot accept what the API
refuses. The tables are parameters so that tests can add an option and see it appear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import traitlets
from IPython.core.magic_arguments import argument

from ipyparmap.options import OPTIONS, Option


def option_arguments(table: tuple[Option, ...] = OPTIONS) -> Callable:
    """A decorator declaring an ``argument`` for each option with a flag, in table order."""
    flagged = [option for option in table if option.flag is not None]

    def decorate(func: Callable) -> Callable:
        # magic_arguments lists arguments in source order, that is the reverse of the
        # order the decorators are applied in
        for option in reversed(flagged):
            func = argument(*option.flag.names, **_argparse_keywords(option))(func)
        return func

    return decorate


def _argparse_keywords(option: Option) -> dict[str, Any]:
    flag = option.flag
    keywords = {"dest": flag.dest, "help": flag.help or option.help}
    if flag.metavar is None:
        keywords["action"] = "store_true"
    else:
        keywords["metavar"] = flag.metavar
    return keywords


def run_settings(args: Any, config: Any, table: tuple[Option, ...] = OPTIONS) -> dict[str, Any]:
    """The options of one invocation for ``api.parmap``: a flag given wins over its
    ``%config`` default (``config`` is the Parmap magics). A bad flag value raises
    ``ValueError`` with the one-line reason."""
    settings = {}
    for option in table:
        if option.flag is None:
            continue
        given = getattr(args, option.flag.dest)
        if given is None or given is False:  # not given: a switch not given is False
            settings[option.name] = getattr(config, option.name) if option.trait else option.default
        elif option.flag.metavar is None:
            settings[option.name] = option.flag.switch
        else:
            settings[option.name] = option.from_text(given)
    return settings


def config_traits(table: tuple[Option, ...] = OPTIONS) -> dict[str, traitlets.TraitType]:
    """The ``%config Parmap.<name>`` traits: the traitlets type the table names (shown by
    ``%config Parmap``), with the option's default and help."""
    traits = {}
    for option in table:
        if option.trait is None:
            continue
        kind = getattr(traitlets, option.trait)
        if option.choices:
            trait = kind(list(option.choices), default_value=option.default, help=option.help)
        else:
            trait = kind(option.default, allow_none=option.default is None, help=option.help)
        traits[option.name] = trait.tag(config=True)
    return traits


def traited(table: tuple[Option, ...] = OPTIONS) -> tuple[str, ...]:
    """Names of the options that are ``%config Parmap`` traits."""
    return tuple(option.name for option in table if option.trait is not None)


def configured_defaults(config: Any, table: tuple[Option, ...] = OPTIONS) -> dict[str, Any]:
    """The ``%config Parmap`` traits of ``config`` (the Parmap magics) that differ from
    the table's defaults: what ``api.configure_defaults`` makes the API's defaults."""
    values = {}
    for option in table:
        if option.trait is not None:
            value = getattr(config, option.name)
            if type(value) is not type(option.default) or value != option.default:
                values[option.name] = value
    return values


def config_validator(table: tuple[Option, ...] = OPTIONS) -> Any:
    """A traitlets validator running each trait's value through its option's check, so
    ``%config Parmap.timeout = 0`` is refused when set, not at the next run."""
    options = {option.name: option for option in table if option.trait is not None}

    @traitlets.validate(*options)
    def _check_config(self, proposal):
        option = options[proposal["trait"].name]
        try:
            option.validate(proposal["value"], f"Parmap.{option.name}")
        except (TypeError, ValueError) as exc:
            raise traitlets.TraitError(str(exc)) from None
        return proposal["value"]  # as given ("2GB" stays a string): the run checks it again

    return _check_config


def markdown_table(parser: Any, table: tuple[Option, ...] = OPTIONS) -> str:
    """The options table of docs/magics.md, from the magic's parser (which also has the
    flags that are not run options: -o, --report, --bg)."""
    configured = {o.flag.dest: o.name for o in table if o.flag is not None and o.trait}
    rows = ["| option | meaning | config default |", "| --- | --- | --- |"]
    for action in parser._actions:
        if not action.option_strings:
            continue
        value = f" {action.metavar}" if action.metavar else ""
        spellings = ", ".join(f"`{name}{value}`" for name in action.option_strings)
        name = configured.get(action.dest)
        default = f"`Parmap.{name}`" if name else ""
        meaning = action.help.replace("|", "\\|")
        rows.append(f"| {spellings} | {meaning} | {default} |")
    return "\n".join(rows) + "\n"
