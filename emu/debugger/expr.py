"""Breakpoint conditions: a small expression language over registers and guest memory.

Parsed once into a tree of tuples and evaluated against an `EvalContext`; Python's eval is never
used, so a condition can only read registers and memory. Grammar (C precedence, integers only):

    expr    := or ; or := and ("||" and)* ; and := bitor ("&&" bitor)*
    bitor   := xor ("|" xor)* ; xor := bitand ("^" bitand)* ; bitand := cmp ("&" cmp)*
    cmp     := shift (("=="|"!="|"<"|"<="|">"|">=") shift)*
    shift   := sum (("<<"|">>") sum)* ; sum := term (("+"|"-") term)*
    term    := unary (("*"|"/"|"%") unary)* ; unary := ("-"|"~"|"!") unary | atom
    atom    := NUMBER | REGISTER | SIZE "[" expr "]" | "phys" SIZE "[" expr "]" | "(" expr ")"

NUMBER is decimal or 0x-hex; REGISTER is any name `registers.read_register` knows (rax, eax, ax,
al, rip, cs, cr0, efer, zf, ...); SIZE is byte, word, dword or qword; `[...]` reads a linear
address through the guest's paging, `phys byte [...]` a physical one. Comparisons give 0 or 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from emu.errors import EmuError

SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8}
_TOKEN = re.compile(r"\s*(0[xX][0-9a-fA-F]+|\d+|[A-Za-z_][A-Za-z0-9_]*|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^~!<>()\[\]])")
_BINARY = [
    ("||",),
    ("&&",),
    ("|",),
    ("^",),
    ("&",),
    ("==", "!=", "<", "<=", ">", ">="),
    ("<<", ">>"),
    ("+", "-"),
    ("*", "/", "%"),
]
MASK64 = (1 << 64) - 1


class ExprError(EmuError):
    """A condition that does not parse or cannot be evaluated (one line for the user)."""


class EvalContext(Protocol):
    def register(self, name: str) -> int: ...
    def read_linear(self, addr: int, size: int) -> bytes: ...
    def read_physical(self, addr: int, size: int) -> bytes: ...


Node = tuple  # ("num", v) | ("reg", name) | ("mem", size, phys, node) | (op, a) | (op, a, b)


@dataclass(frozen=True)
class Expr:
    text: str
    tree: Node

    def evaluate(self, ctx: EvalContext) -> int:
        return _eval(self.tree, ctx)


def parse(text: str, known_register: object = None) -> Expr:
    """Parse `text`; `known_register(name) -> bool` rejects unknown names at parse time."""
    tokens = _tokenize(text)
    parser = _Parser(tokens, known_register)
    tree = parser.expr(0)
    if parser.pos != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.pos]!r} in condition {text!r}")
    return Expr(text, tree)


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(f"cannot read condition {text!r} at {text[pos:].strip()!r}")
        tokens.append(m.group(1))
        pos = m.end()
    if not tokens:
        raise ExprError("empty condition")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], known_register: object) -> None:
        self.tokens = tokens
        self.pos = 0
        self.known = known_register

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok.lower() != want):
            raise ExprError(f"expected {want or 'more'} in condition, got {tok or 'the end'}")
        self.pos += 1
        return tok

    def expr(self, level: int) -> Node:
        if level == len(_BINARY):
            return self.unary()
        left = self.expr(level + 1)
        while self.peek() in _BINARY[level]:
            op = self.take()
            left = (op, left, self.expr(level + 1))
        return left

    def unary(self) -> Node:
        if self.peek() in ("-", "~", "!"):
            op = self.take()
            return ("u" + op, self.unary())
        return self.atom()

    def atom(self) -> Node:
        tok = self.take()
        low = tok.lower()
        if tok == "(":
            node = self.expr(0)
            self.take(")")
            return node
        if tok[0].isdigit():
            return ("num", int(tok, 0))
        phys = low == "phys"
        if phys:
            low = self.take().lower()
            if low not in SIZES:
                raise ExprError("`phys` must be followed by byte, word, dword or qword [ADDR]")
        if low in SIZES:
            self.take("[")
            node = self.expr(0)
            self.take("]")
            return ("mem", SIZES[low], phys, node)
        if callable(self.known) and not self.known(low):
            raise ExprError(f"unknown register {tok!r} in condition")
        return ("reg", low)


def _eval(node: Node, ctx: EvalContext) -> int:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "reg":
        return ctx.register(node[1])
    if kind == "mem":
        addr = _eval(node[3], ctx) & MASK64
        data = ctx.read_physical(addr, node[1]) if node[2] else ctx.read_linear(addr, node[1])
        return int.from_bytes(data, "little")
    if kind == "u-":
        return -_eval(node[1], ctx) & MASK64
    if kind == "u~":
        return ~_eval(node[1], ctx) & MASK64
    if kind == "u!":
        return int(not _eval(node[1], ctx))
    a = _eval(node[1], ctx)
    if kind == "&&":
        return int(bool(a) and bool(_eval(node[2], ctx)))
    if kind == "||":
        return int(bool(a) or bool(_eval(node[2], ctx)))
    b = _eval(node[2], ctx)
    if kind in ("/", "%") and b == 0:
        raise ExprError("division by zero in condition")
    ops = {
        "|": lambda: a | b, "^": lambda: a ^ b, "&": lambda: a & b,
        "==": lambda: int(a == b), "!=": lambda: int(a != b), "<": lambda: int(a < b),
        "<=": lambda: int(a <= b), ">": lambda: int(a > b), ">=": lambda: int(a >= b),
        "<<": lambda: a << (b & 63), ">>": lambda: a >> (b & 63),
        "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
        "/": lambda: a // b, "%": lambda: a % b,
    }  # fmt: skip
    return ops[kind]() & MASK64
