"""Parsing ``%%parmap`` lines and turning a cell body into a function (layer: magics).

Pure Python (no IPython import), so the rules can be tested on their own:

- `split_line` separates ``[options] TARGET in EXPR [options]`` using the
  tokenizer, so an option-like ``-w`` inside EXPR's brackets or strings is never taken
  for an option (``%%parmap x in range(-3, 3) -w 2`` works).
- `split_func_expr` finds where FUNC ends and EXPR starts in ``%parmap FUNC EXPR``.
- `compile_body` compiles the cell body into ``def <cell>(item)``: TARGET is
  bound to the item, the last expression is the result, names the body assigns stay
  local, and free names resolve to the notebook's globals.

Errors are raised as `CellError` (the magic turns them into ``UsageError``) or as
the user's own ``SyntaxError``, pointing at the cell line.
"""

from __future__ import annotations

import ast
import io
import keyword
import tokenize
from dataclasses import dataclass

CELL_FUNCTION = "parmap_cell"
ITEM_ARG = "_parmap_item_"


class CellError(ValueError):
    """Misuse of the magic's syntax; shown to the user as a one-line UsageError."""


@dataclass(frozen=True)
class SplitLine:
    head: str  # "[options] TARGET": the magic separates the two with its parser
    expr: str
    options: str  # option text after EXPR


def _tokens(text: str) -> list[tokenize.TokenInfo] | None:
    try:
        return [
            tok
            for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
        ]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None


def _top_level(tokens: list[tokenize.TokenInfo]):
    """Yield ``(position, token)`` for tokens outside brackets."""
    depth = 0
    for position, tok in enumerate(tokens):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            yield position, tok


def options_start(text: str) -> int:
    """Column where trailing options begin in ``text`` (``len(text)`` if none).

    An option is a ``-`` outside brackets and strings, preceded by a space and directly
    followed by a name or another ``-`` (``-w``, ``--workers``).
    """
    tokens = _tokens(text)
    if tokens is None:
        return len(text)
    for position, tok in _top_level(tokens):
        if tok.type != tokenize.OP or tok.string != "-" or position + 1 >= len(tokens):
            continue
        after = tokens[position + 1]
        adjacent = after.start == tok.end and (
            after.type == tokenize.NAME or (after.type == tokenize.OP and after.string == "-")
        )
        spaced = tok.start[1] == 0 or text[tok.start[1] - 1].isspace()
        if adjacent and spaced:
            return tok.start[1]
    return len(text)


def split_line(line: str) -> SplitLine:
    """Split ``[options] TARGET in EXPR [options]``."""
    line = line.strip()
    hint = "%%parmap needs 'TARGET in EXPR', e.g. %%parmap x in items"
    if not line:
        raise CellError(hint)
    tokens = _tokens(line)
    split = None
    if tokens is not None:
        for _, tok in _top_level(tokens):
            if tok.type == tokenize.NAME and tok.string == "in":
                split = tok
                break
    if split is None:
        raise CellError(f"{hint}; got {line!r}")
    before = line[: split.start[1]].rstrip()
    rest = line[split.end[1] :]
    cut = options_start(rest)
    expr, after = rest[:cut].strip(), rest[cut:].strip()
    if not expr:
        raise CellError("missing EXPR after 'in'")
    return SplitLine(before, expr, after)


def check_target(target: str) -> ast.expr:
    """Parse TARGET as an assignment target, or raise CellError."""
    if not target.strip():
        raise CellError("%%parmap needs 'TARGET in EXPR', e.g. %%parmap x in items")
    try:
        tree = ast.parse(f"{target} = None", mode="exec")
    except SyntaxError:
        raise CellError(f"{target!r} is not an assignment target") from None
    statement = tree.body[0]
    if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
        raise CellError(f"{target!r} is not an assignment target")
    return statement.targets[0]


def split_func_expr(text: str) -> tuple[str, str]:
    """Split ``FUNC EXPR`` at the first space where both halves are expressions."""
    text = text.strip()
    for position, char in enumerate(text):
        if not char.isspace():
            continue
        left, right = text[:position].strip(), text[position:].strip()
        if left and right and _is_expression(left) and _is_expression(right):
            return left, right
    raise CellError("%parmap needs FUNC and EXPR, e.g. res = %parmap f items")


def _is_expression(text: str) -> bool:
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return True


def is_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


class _BodyChecks(ast.NodeVisitor):
    """Finds what a cell body may not contain, outside nested functions and classes."""

    def __init__(self) -> None:
        self.problem: tuple[str, int] | None = None
        self.global_names: list[str] = []

    def _skip(self, node) -> None:  # a nested def/lambda/class has its own rules
        return None

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _skip

    def _flag(self, what: str, node) -> None:
        if self.problem is None:
            self.problem = (what, node.lineno)

    def visit_Yield(self, node) -> None:
        self._flag("yield", node)

    visit_YieldFrom = visit_Yield

    def visit_Await(self, node) -> None:
        self._flag("await", node)

    def visit_AsyncFor(self, node) -> None:
        self._flag("async for", node)

    def visit_AsyncWith(self, node) -> None:
        self._flag("async with", node)

    def visit_Global(self, node) -> None:
        self.global_names.extend(node.names)


@dataclass
class CompiledCell:
    code: object  # the compiled module defining CELL_FUNCTION
    global_names: list  # names the body declares ``global``


def compile_body(target: str, body: str, filename: str, first_body_line: int = 2) -> CompiledCell:
    """Compile ``body`` into ``def parmap_cell(item): TARGET = item; ...; return last``.

    ``filename`` and ``first_body_line`` make tracebacks point at the notebook cell:
    the body's first line is line ``first_body_line`` of the cell (the magic line is 1).
    """
    target_node = check_target(target)
    try:
        tree = ast.parse(body, filename=filename, mode="exec")
    except SyntaxError as exc:
        if exc.lineno is not None:
            exc.lineno += first_body_line - 1
        exc.filename = filename
        raise
    if not tree.body:
        raise CellError("the cell body is empty: nothing to run for each item")
    checks = _BodyChecks()
    for statement in tree.body:
        checks.visit(statement)
    if checks.problem is not None:
        what, line = checks.problem
        if what == "yield":
            raise CellError(
                f"'yield' is not allowed in a %%parmap body (line {line + first_body_line - 1}):"
                " the result would be a generator, which cannot be sent back"
            )
        raise CellError(
            f"'{what}' is not supported in a %%parmap body (line "
            f"{line + first_body_line - 1}): async bodies would return coroutines; "
            "use asyncio.run(...) inside the body"
        )
    ast.increment_lineno(tree, first_body_line - 1)
    last = tree.body[-1]
    if isinstance(last, ast.Expr):
        tree.body[-1] = ast.copy_location(ast.Return(value=last.value), last)
    bind = _bind_target(target_node, target)
    fields = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}
    function = ast.FunctionDef(
        name=CELL_FUNCTION,
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg=ITEM_ARG)],
            vararg=None,
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=None,
            defaults=[],
        ),
        body=[*bind, *tree.body],
        decorator_list=[],
        returns=None,
        **fields,
    )
    module = ast.Module(body=[function], type_ignores=[])
    ast.fix_missing_locations(_at_line_one(module, tree))
    code = compile(module, filename, "exec")
    return CompiledCell(code, checks.global_names)


def _at_line_one(module: ast.Module, body_tree: ast.Module) -> ast.Module:
    """Give every node we synthesized (not from the body) line 1: the magic line."""
    from_body = {id(node) for node in ast.walk(body_tree)}
    for node in ast.walk(module):
        if id(node) in from_body:
            continue
        if "lineno" in node._attributes:
            node.lineno = node.end_lineno = 1
            node.col_offset = node.end_col_offset = 0
    return module


def _bind_target(target_node: ast.expr, target_text: str) -> list[ast.stmt]:
    """``TARGET = item``; unpacking errors name the target ("... into 'a, b'")."""
    assign = ast.Assign(targets=[target_node], value=ast.Name(ITEM_ARG, ast.Load()))
    if not isinstance(target_node, (ast.Tuple, ast.List, ast.Starred)):
        return [assign]
    # try: a, b = item
    # except (TypeError, ValueError) as e: raise type(e)(f"{e} into 'a, b'") from None
    error = "_parmap_error_"
    message = ast.JoinedStr(
        values=[
            ast.FormattedValue(ast.Name(error, ast.Load()), conversion=-1),
            ast.Constant(f" into {target_text.strip()!r}"),
        ]
    )
    reraise = ast.Raise(
        exc=ast.Call(
            func=ast.Call(ast.Name("type", ast.Load()), [ast.Name(error, ast.Load())], []),
            args=[message],
            keywords=[],
        ),
        cause=ast.Constant(None),
    )
    handler = ast.ExceptHandler(
        type=ast.Tuple(
            [ast.Name("TypeError", ast.Load()), ast.Name("ValueError", ast.Load())], ast.Load()
        ),
        name=error,
        body=[reraise],
    )
    return [ast.Try(body=[assign], handlers=[handler], orelse=[], finalbody=[])]
