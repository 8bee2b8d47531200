"""Text layout of an exported script: statements rewrapped to the line length, docstrings cut
to their summary, plain data written as literals, imports merged isort-style.

Every function here takes and returns source text; none changes what the code does (a rewrap
that would change the syntax tree is not made).
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
import tokenize
from typing import Any

LINE_LENGTH = 120


def is_stdlib(module: str) -> bool:
    """True when ``module`` belongs to Python's standard library."""
    return module.split(".")[0] in sys.stdlib_module_names


def refill(text: str) -> str:
    """Return ``text`` (whole top-level statements) with every statement that spans several
    lines inside brackets, and holds no comment and no string that continues on the next line,
    rewrapped: on one line when it fits :data:`LINE_LENGTH`, else with the items of its widest
    bracket packed onto as few lines as fit, aligned after the bracket. Only whitespace and
    trailing commas change, and a rewrap that would change the syntax tree is not made."""
    lines = text.split("\n")
    try:
        tree = ast.dump(ast.parse(text))
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return text
    wraps: list[tuple[int, int, list[str]]] = []
    first: int | None = None
    plain = True
    for tok in tokens:
        skip = tok.type in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT)
        if skip or (first is None and tok.type == tokenize.COMMENT):
            continue
        if first is None:
            first, plain = tok.start[0] - 1, True
        if tok.type == tokenize.COMMENT or tok.start[0] != tok.end[0]:
            plain = False  # a comment, or a string spanning lines: kept as written
        if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            last = tok.start[0] - 1
            new = _rewrap(lines[first:last + 1]) if plain and last > first else None
            if new is not None and len(new) <= last - first:
                wraps.append((first, last + 1, new))
            first = None
    for a, b, new in reversed(wraps):
        trial = lines[:a] + new + lines[b:]
        with contextlib.suppress(SyntaxError):
            if ast.dump(ast.parse("\n".join(trial))) == tree:
                lines = trial
    return "\n".join(lines)


_OPEN, _CLOSE = "([{", ")]}"
# Python 3.12 tokenizes f-strings into pieces; their braces are not brackets to wrap in.
_FSTRING_START, _FSTRING_END = getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "FSTRING_END", -1)
_LITERAL = re.compile(r"(?is)([a-z]*)(['\"])(.*)\2")


def _merge_strings(line: str) -> str:
    """``line`` with neighbouring string literals of one kind (``"a " "b"``, ``f"a " f"b"``)
    written as one: how a statement joined onto one line reads."""
    runs: list[list[tokenize.TokenInfo]] = []
    last = None
    for tok in tokenize.generate_tokens(io.StringIO(line + "\n").readline):
        if tok.type == tokenize.STRING and last is not None and last.type == tokenize.STRING:
            runs[-1].append(tok)
        elif tok.type == tokenize.STRING:
            runs.append([tok])
        last = tok
    for run in reversed([r for r in runs if len(r) > 1]):
        parts = [_LITERAL.fullmatch(t.string) for t in run]
        kinds = {(m.group(1).lower(), m.group(2)) if m and not m.group(3).startswith(m.group(2) * 2) else None
                 for m in parts}
        if len(kinds) == 1 and None not in kinds:
            prefix, quote = parts[0].group(1), parts[0].group(2)  # type: ignore[union-attr]
            merged = prefix + quote + "".join(m.group(3) for m in parts) + quote  # type: ignore[union-attr]
            line = line[: run[0].start[1]] + merged + line[run[-1].end[1]:]
    return line


def _rewrap(rows: list[str]) -> list[str] | None:
    """One statement's ``rows`` on one line, or packed in its widest top-level bracket (None
    when that does not fit)."""
    joined = rows[0].rstrip()
    for row in rows[1:]:
        piece = row.strip()
        if piece[0] in _CLOSE and joined.endswith(","):
            joined = joined[:-1]  # the trailing comma of a one-item-per-line layout
        joined += piece if joined[-1] in _OPEN or piece[0] in _CLOSE else " " + piece
    joined = _merge_strings(joined)
    if len(joined) <= LINE_LENGTH:
        return [joined]
    opened: list[int] = []
    commas: dict[int, list[int]] = {}
    best: tuple[int, int] | None = None
    in_fstring = 0
    for tok in tokenize.generate_tokens(io.StringIO(joined + "\n").readline):
        in_fstring += (tok.type == _FSTRING_START) - (tok.type == _FSTRING_END)
        if tok.type != tokenize.OP or in_fstring:
            continue
        col = tok.start[1]
        if tok.string in _OPEN:
            opened.append(col)
            commas[col] = []
        elif tok.string in _CLOSE:
            at = opened.pop()
            if not opened and (best is None or col - at > best[1] - best[0]):
                best = (at, col)
        elif tok.string == "," and opened:
            commas[opened[-1]].append(col)
    if best is None or best[0] + 1 > LINE_LENGTH // 2:
        return None
    at, end = best
    starts, stops = [at + 1, *(c + 1 for c in commas[at])], [*commas[at], end]
    items = [item for a, b in zip(starts, stops, strict=True) if (item := joined[a:b].strip())]
    out = [joined[: at + 1]]
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else joined[end:])
        if i and len(out[-1]) + 1 + len(piece) > LINE_LENGTH:
            out.append(" " * (at + 1) + piece)
        else:
            out[-1] += (" " if i else "") + piece
        if len(out[-1]) > LINE_LENGTH:
            return None
    return out


_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc):`~?(?:[\w.]*\.)?(\w+)`")


def plain_roles(text: str) -> str:
    """Return ``text`` with every Sphinx cross-reference (``:class:`~pkg.Name` ``) written as
    the bare name in double backquotes: the script's reader has no documentation to follow
    it to, and the name is defined in the script or is torch's."""
    return _ROLE.sub(r"``\1``", text)


def docstring_summary(doc: list[str]) -> list[str]:
    """A docstring's lines cut to its first paragraph (with the literal block that paragraph
    introduces when it ends in ``::``): the script keeps what each definition is for; the
    library keeps the whole reference."""
    blank = [i for i, line in enumerate(doc) if i and not line.strip()]
    if not blank:
        return doc
    cut = blank[0]
    literal = doc[cut - 1].rstrip().endswith("::")
    if literal:
        later = [i for i in blank if i > cut + 1]
        if not later:
            return doc
        cut = later[0]
    kept = doc[:cut]
    quote = '"""' if '"""' in doc[0] else "'''"
    if not literal and len(kept[-1]) + len(quote) <= LINE_LENGTH:
        return [*kept[:-1], kept[-1] + quote]
    indent = doc[0][: len(doc[0]) - len(doc[0].lstrip())]
    return [*kept, indent + quote]


def literal(value: Any, indent: int = 0, width: int = 100) -> str:
    """Return ``value`` (plain data) as a Python literal that fits ``width`` columns where it
    can: a dict or list too long for one line puts its items on lines of their own at
    ``indent + 4`` columns, as many to a line as fit."""
    flat = repr(value)
    if indent + len(flat) <= width or not isinstance(value, dict | list) or not value:
        return flat
    pad = " " * (indent + 4)
    if isinstance(value, dict):
        items = [f"{k!r}: {literal(v, indent + 4, width)}" for k, v in sorted(value.items())]
    else:
        items = [literal(v, indent + 4, width) for v in value]
    lines: list[str] = []
    for item in items:
        if lines and "\n" not in item and "\n" not in lines[-1] and len(lines[-1]) + len(item) + 2 <= width:
            lines[-1] += f" {item},"
        else:
            lines.append(f"{pad}{item},")
    opening, closing = "{}" if isinstance(value, dict) else "[]"
    return opening + "\n" + "\n".join(lines) + "\n" + " " * indent + closing


def _by_type(name: str) -> tuple[int, str]:
    """isort's order-by-type: CONSTANTS, then Classes, then the rest."""
    bare = name.split(" as ")[0]
    kind = 0 if bare.isupper() and len(bare) > 1 else 1 if bare[:1].isupper() else 2
    return kind, bare


def import_lines(external: dict[str, tuple[str, str | None]]) -> list[str]:
    """Return the merged import statements for the used external names, isort-style:
    standard library first, then third-party; ``import x`` before ``from x import``."""
    plain: dict[bool, set[str]] = {True: set(), False: set()}
    froms: dict[tuple[bool, str], set[str]] = {}
    for local, (module, name) in external.items():
        std = is_stdlib(module)
        if name is None:
            plain[std].add(module if local == module else f"{module} as {local}")
        else:
            froms.setdefault((std, module), set()).add(name if local == name else f"{name} as {local}")
    blocks = []
    for std in (True, False):
        block = [f"import {m}" for m in sorted(plain[std], key=lambda s: s.split(" ")[0])]
        block += [f"from {m} import {', '.join(sorted(names, key=_by_type))}"
                  for (s, m), names in sorted(froms.items()) if s == std]
        if block:
            blocks.append("\n".join(block))
    return blocks
