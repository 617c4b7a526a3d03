"""Safe band-math expressions, e.g. ``(B08 - B04) / (B08 + B04)`` or ``B04;B03;B02``.

The text is parsed with :func:`ast.parse` (``mode="eval"``, which only builds a syntax tree) and
the tree is checked against an allow-list, then evaluated by walking it with numpy. User text is
never passed to ``eval``/``exec``/``compile``-to-bytecode. Allowed:

* band names (``[A-Za-z][A-Za-z0-9_]*``, case-sensitive) and int/float literals;
* ``+ - * /``, unary ``+ -``, ``**`` with a constant exponent (a number or arithmetic on numbers,
  |exponent| ≤ 64), and one comparison ``< <= > >= == !=`` (1.0 true, 0.0 false);
* ``where(cond, a, b)``, ``abs(x)``, ``sqrt(x)``, ``log(x)`` (natural), ``clip(x, lo, hi)``,
  ``min(a, b, ...)``, ``max(a, b, ...)`` with positional arguments;
* several outputs separated by ``;``.

Limits: 1,000 characters, 256 syntax nodes, nesting depth 32. Anything else raises
``ValueError`` naming the offending token and its 1-based column.

Evaluation is in float32; NaN is nodata and propagates (also through comparisons and
``where``'s condition). Division by 0, ``log`` of x ≤ 0, ``sqrt`` of x < 0 and overflow give
NaN: every output value is finite or NaN.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

__all__ = ["MAX_LENGTH", "Expression", "compile_expression"]

MAX_LENGTH = 1000
MAX_NODES = 256
MAX_DEPTH = 32
MAX_EXPONENT = 64.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NAN = np.float32(np.nan)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d[\w.]*|\S")
_ARITY: dict[str, tuple[int, int | None]] = {  # (least, most) arguments; None: no limit
    "where": (3, 3),
    "abs": (1, 1),
    "sqrt": (1, 1),
    "log": (1, 1),
    "clip": (3, 3),
    "min": (2, None),
    "max": (2, None),
}
_ARITHMETIC = frozenset({ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow})
_OTHER_BINOPS = {
    ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.BitXor: "^", ast.BitOr: "|",
    ast.BitAnd: "&", ast.LShift: "<<", ast.RShift: ">>",
}
_COMPARISONS = {
    ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
    ast.Eq: np.equal, ast.NotEq: np.not_equal,
}
_COMPARISON_TEXT = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not",
}


@dataclass(frozen=True, eq=False)
class Expression:
    """A validated expression. Call it with ``{band name: array}`` (float32, NaN = nodata, all of
    one shape) to get ``float32 [outputs, *band_shape]``."""

    text: str
    names: tuple[str, ...]
    trees: tuple[ast.expr, ...] = field(repr=False)

    @property
    def outputs(self) -> int:
        """Number of ``;``-separated outputs."""
        return len(self.trees)

    def __call__(self, bands: Mapping[str, np.ndarray]) -> np.ndarray:
        for name in self.names:
            if name not in bands:
                raise ValueError(f"unknown band {name!r}")
        arrays = {name: np.asarray(bands[name], np.float32) for name in self.names}
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) > 1:
            raise ValueError(f"bands have different shapes: {sorted(shapes)}")
        if shapes:
            shape = shapes.pop()
        else:  # constants only: take the shape of whatever was passed
            shape = np.shape(next(iter(bands.values()))) if bands else ()
        out = np.empty((self.outputs, *shape), np.float32)
        with np.errstate(all="ignore"):
            for i, tree in enumerate(self.trees):
                out[i] = _evaluate(tree, arrays)
        out[~np.isfinite(out)] = np.nan
        return out


def compile_expression(text: str) -> Expression:
    """Validate ``text`` and return an :class:`Expression`; ``ValueError`` names what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"expression too long: {len(text)} characters (at most {MAX_LENGTH})")
    for i, char in enumerate(text):
        # '#' would start a comment the parser silently drops, '\\' a line continuation
        if not (char.isascii() and char.isprintable()) or char in "#\\":
            raise ValueError(f"unsupported character {char!r} at column {i + 1}")
    trees, names, start = [], [], 0
    for part in text.split(";"):
        stripped = part.lstrip()
        base = start + len(part) - len(stripped)
        start += len(part) + 1
        if not stripped.strip():
            raise ValueError(f"empty expression at column {base + 1}")
        checker = _Checker(stripped.rstrip(), base)
        trees.append(checker.check())
        names.extend(n for n in checker.names if n not in names)
    return Expression(text, tuple(names), tuple(trees))


class _Checker:
    """Allow-list walk over the tree of one ``;``-separated part (``src``, at ``base`` in text)."""

    def __init__(self, src: str, base: int):
        self.src, self.base = src, base
        self.names: list[str] = []
        self.nodes = 0

    def error(self, reason: str, token: str, col: int) -> ValueError:
        return ValueError(f"{reason} {token[:40]!r} at column {self.base + col + 1}")

    def check(self) -> ast.expr:
        try:
            tree = ast.parse(self.src, mode="eval")
        except SyntaxError as error:  # offset 0 / None: at the end of the input
            col = error.offset - 1 if error.offset else len(self.src)
            match = _TOKEN.match(self.src, col) if col < len(self.src) else None
            token = match.group() if match else "end of input"
            raise self.error(f"{error.msg}, near", token, col) from None
        except (RecursionError, MemoryError, ValueError):
            raise ValueError("expression too complex") from None
        self.visit(tree.body, 1)
        return tree.body

    def visit(self, node: ast.AST, depth: int) -> None:
        self.nodes += 1
        col = getattr(node, "col_offset", 0)
        if self.nodes > MAX_NODES:
            raise self.error("too many terms, at", self.token(node), col)
        if depth > MAX_DEPTH:
            raise self.error("too deeply nested, at", self.token(node), col)
        if isinstance(node, ast.Constant):
            self.number(node)
        elif isinstance(node, ast.Name):
            if node.id in _ARITY:
                raise self.error("function used as a value:", node.id, col)
            if not _NAME.fullmatch(node.id):
                raise self.error("unsupported name or syntax", node.id, col)
            if node.id not in self.names:
                self.names.append(node.id)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise self.error("unsupported operator", self.token(node), col)
            self.visit(node.operand, depth + 1)
        elif isinstance(node, ast.BinOp):
            self.binop(node, depth)
        elif isinstance(node, ast.Compare):
            op = node.ops[-1] if len(node.ops) > 1 else node.ops[0]
            if len(node.ops) > 1 or type(op) not in _COMPARISONS:
                left = node.comparators[-2] if len(node.ops) > 1 else node.left
                symbol = _COMPARISON_TEXT[type(op)]
                col = self.operator_column(symbol, left, node.comparators[-1])
                raise self.error("unsupported operator", symbol, col)
            self.visit(node.left, depth + 1)
            self.visit(node.comparators[0], depth + 1)
        elif isinstance(node, ast.Call):
            self.call(node, depth)
        else:
            if isinstance(node, (ast.Attribute, ast.Subscript)):
                self.visit(node.value, depth + 1)  # report the leftmost offence first
            raise self.error("unsupported name or syntax", self.token(node), self.column(node))

    def number(self, node: ast.Constant) -> float:
        if type(node.value) not in (int, float):
            raise self.error("unsupported name or syntax", self.token(node), node.col_offset)
        try:
            value = float(node.value)
        except OverflowError:
            value = math.inf
        if not abs(value) <= _FLOAT32_MAX:
            raise self.error("number out of range", self.token(node), node.col_offset)
        return value

    def binop(self, node: ast.BinOp, depth: int) -> None:
        op = type(node.op)
        if op not in _ARITHMETIC:
            symbol = _OTHER_BINOPS.get(op, "?")
            col = self.operator_column(symbol, node.left, node.right)
            raise self.error("unsupported operator", symbol, col)
        self.visit(node.left, depth + 1)
        if op is not ast.Pow:
            self.visit(node.right, depth + 1)
            return
        exponent = self.constant(node.right)
        if not abs(exponent) <= MAX_EXPONENT:
            raise self.error("exponent too large:", self.token(node.right), node.right.col_offset)
        node.right = ast.copy_location(ast.Constant(exponent), node.right)  # folded for evaluation

    def constant(self, node: ast.AST) -> float:
        """Value of an exponent: numbers combined with unary/binary + - * / only."""
        self.nodes += 1
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.constant(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
            a, b = self.constant(node.left), self.constant(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if b == 0:
                raise self.error("division by zero in exponent", self.token(node), node.col_offset)
            return a / b
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            col = self.operator_column("**", node.left, node.right)
            raise self.error("power in an exponent:", "**", col)
        raise self.error("exponent must be a number, not", self.token(node), self.column(node))

    def call(self, node: ast.Call, depth: int) -> None:
        if not isinstance(node.func, ast.Name):
            self.visit(node.func, depth + 1)  # fails for attributes, subscripts, ...
            raise self.error("unsupported name or syntax", "(", node.func.end_col_offset)
        name = node.func.id
        if name not in _ARITY:
            raise self.error("unsupported function", name, node.col_offset)
        for keyword in node.keywords:
            token = f"{keyword.arg or '**'}="
            raise self.error("unsupported keyword argument", token, keyword.col_offset)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error("unsupported name or syntax", "*", arg.col_offset)
        lo, hi = _ARITY[name]
        if len(node.args) < lo or (hi is not None and len(node.args) > hi):
            wanted = f"{lo}+" if hi is None else str(lo)
            raise self.error(f"{name}() takes {wanted} arguments, in", name, node.col_offset)
        for arg in node.args:
            self.visit(arg, depth + 1)

    def operator_column(self, symbol: str, left: ast.AST, right: ast.AST) -> int:
        at = self.src[left.end_col_offset : right.col_offset].find(symbol.split()[0])
        return left.end_col_offset + max(at, 0)

    def column(self, node: ast.AST) -> int:
        if isinstance(node, ast.Attribute):
            return node.end_col_offset - len(node.attr) - 1
        if isinstance(node, ast.Subscript):
            return node.value.end_col_offset
        return node.col_offset

    def token(self, node: ast.AST) -> str:
        """The offending token of ``node`` as written."""
        if isinstance(node, ast.Attribute):
            return f".{node.attr}"
        if isinstance(node, ast.Subscript):
            return "["
        if isinstance(node, ast.IfExp):
            return "if"
        if isinstance(node, ast.BoolOp):
            return "and" if isinstance(node.op, ast.And) else "or"
        if isinstance(node, ast.NamedExpr):
            return ":="
        segment = ast.get_source_segment(self.src, node) or ""
        if isinstance(node, (ast.Constant, ast.JoinedStr)):
            return segment
        match = _TOKEN.match(segment)
        return match.group() if match else segment


def _divide(a, b):
    return np.where(b == 0, _NAN, np.divide(a, b))


def _where(cond, a, b):
    return np.where(np.isnan(cond), _NAN, np.where(cond != 0, a, b))


def _log(x):
    return np.where(x > 0, np.log(x), _NAN)


_FUNCTIONS = {
    "where": _where,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "log": _log,
    "clip": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    "min": lambda *args: reduce(np.minimum, args),
    "max": lambda *args: reduce(np.maximum, args),
}
_APPLY = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: _divide}


def _evaluate(node: ast.AST, bands: Mapping[str, np.ndarray]):
    """Evaluate a validated tree; values are float32 arrays or float32 scalars."""
    if isinstance(node, ast.Constant):
        return np.float32(node.value)
    if isinstance(node, ast.Name):
        return bands[node.id]
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, bands)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left = _evaluate(node.left, bands)
        if isinstance(node.op, ast.Pow):
            return np.power(left, np.float32(node.right.value))
        return _APPLY[type(node.op)](left, _evaluate(node.right, bands))
    if isinstance(node, ast.Compare):
        a = _evaluate(node.left, bands)
        b = _evaluate(node.comparators[0], bands)
        result = _COMPARISONS[type(node.ops[0])](a, b)
        return np.where(np.isnan(a) | np.isnan(b), _NAN, result.astype(np.float32))
    return _FUNCTIONS[node.func.id](*(_evaluate(arg, bands) for arg in node.args))  # ast.Call
