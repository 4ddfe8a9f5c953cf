"""A bounded evaluator for the expressions users write in study files (constraints,
expert picks): arithmetic, comparisons and and/or/not over numbers and strings.

Python's ``eval`` on a checked AST is still unbounded: ``hidden ** 999999999`` builds
an integer of a billion digits and ``'a' * 4000000000`` a 4 GB string. This walker
computes every arithmetic result as a float (so ``**`` is ``math.pow``, which
overflows instead of growing), allows strings only as operands of == and !=, and
refuses results whose magnitude exceeds ``MAX_MAGNITUDE`` — time and memory are
bounded by the expression's length, which is itself capped.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from typing import Any

# Longest expression text: a constraint is one line; 2,000 characters keeps the
# parser's recursion (and this walker's) shallow.
MAX_EXPRESSION_CHARS = 2000
# Largest |value| an intermediate result may have: far above any parameter count
# (1e15) or FLOP count (1e26), far below float overflow.
MAX_MAGNITUDE = 1e100


class EvalError(ValueError):
    """An expression that cannot be evaluated within bounds (the message says why)."""


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: math.pow,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)  # ints beyond 1e308 overflow here, caught by the caller
        if not math.isfinite(number) or abs(number) > MAX_MAGNITUDE:
            raise EvalError(f"{what}: {value!r} is beyond +-{MAX_MAGNITUDE:g}")
        return number
    raise EvalError(f"{what}: arithmetic needs numbers, got {type(value).__name__} {value!r}")


def evaluate(node: ast.AST, names: Mapping[str, Any]) -> Any:
    """The value of a parsed expression (``ast.Expression`` or its body); ZeroDivisionError
    propagates (callers decide what a division by zero means)."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body, names)
    if isinstance(node, ast.Constant):
        return _constant(node)
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise EvalError(f"unknown name '{node.id}'")
        value = names[node.id]
        return value if isinstance(value, str) else _number(value, node.id)
    if isinstance(node, ast.UnaryOp):
        return _unary(node, names)
    if isinstance(node, ast.BoolOp):
        return _bool_op(node, names)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _binary(node, names)
    if isinstance(node, ast.Compare):
        return _compare(node, names)
    raise _not_allowed(node)


def _not_allowed(node: ast.AST) -> EvalError:
    return EvalError(f"{type(node).__name__} is not allowed in an expression")


def _constant(node: ast.Constant) -> Any:
    if isinstance(node.value, bool | int | float):
        return _number(node.value, "constant")
    if isinstance(node.value, str):
        return node.value
    raise EvalError(f"constant {node.value!r} is not a number or string")


def _unary(node: ast.UnaryOp, names: Mapping[str, Any]) -> Any:
    value = evaluate(node.operand, names)
    if isinstance(node.op, ast.Not):
        return not value
    number = _number(value, "operand")
    if isinstance(node.op, ast.USub):
        return -number
    if isinstance(node.op, ast.UAdd):
        return number
    raise _not_allowed(node)


def _bool_op(node: ast.BoolOp, names: Mapping[str, Any]) -> Any:
    is_and = isinstance(node.op, ast.And)
    result: Any = is_and
    for child in node.values:
        result = evaluate(child, names)
        if bool(result) != is_and:  # short-circuit as Python does
            return result
    return result


def _binary(node: ast.BinOp, names: Mapping[str, Any]) -> float:
    left = _number(evaluate(node.left, names), "left operand")
    right = _number(evaluate(node.right, names), "right operand")
    try:
        result = _BINARY[type(node.op)](left, right)
    except OverflowError:
        raise EvalError(f"result beyond +-{MAX_MAGNITUDE:g}") from None
    except ValueError:  # math.pow of a negative base to a fractional power
        raise EvalError(f"{left:g} ** {right:g} is not a real number") from None
    return _number(result, "result")


def _compare(node: ast.Compare, names: Mapping[str, Any]) -> bool:
    left = evaluate(node.left, names)
    for op, comparator in zip(node.ops, node.comparators, strict=True):
        right = evaluate(comparator, names)
        if type(op) not in _COMPARE:
            raise EvalError(f"comparison {type(op).__name__} is not allowed")
        if (isinstance(left, str) or isinstance(right, str)) and not isinstance(
            op, ast.Eq | ast.NotEq
        ):
            raise EvalError("strings can only be compared with == and !=")
        if not _COMPARE[type(op)](left, right):
            return False
        left = right
    return True


def parse(text: str) -> ast.Expression:
    """The parsed expression, or EvalError for text too long or not an expression."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise EvalError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise EvalError(f"not an expression ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise EvalError("nested too deeply") from None
