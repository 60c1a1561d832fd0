"""The query parameters of every REST list endpoint: search, sort, start, limit and only.

Each list endpoint answers ``{"data": [...], "meta": {"total", "returned", "sort", "start"}}``:
``total`` counts the matches before paging, ``returned`` the items in ``data``, ``sort`` is the
sort as applied (normalised, ``""`` when none) and ``start`` the integer offset of the first item.
A parameter sent empty counts as not sent.

search
    Terms are separated by spaces. Adjacent terms must all match; ``AND`` and ``OR`` (upper
    case) combine terms explicitly, ``AND`` binding tighter than ``OR``: ``a OR b c`` means
    ``a OR (b AND c)``. Parentheses group: ``(a OR b) c``. Lower-case ``and``/``or`` are words.

    ``key:value``  the field equals the value, ignoring case. Numbers compare as written,
                   booleans as ``true``/``false``. A list field matches when any element
                   does; a dict field (such as ``tags``) matches when it has the value as a
                   key: ``tags:env``. A dotted key walks into nested fields: ``tags.env:prod``
                   (through lists too: ``networks.name:lan`` matches any network named lan).
    ``key=value``  the same as ``key:value``.
    ``key!=value`` the opposite of ``key:value`` (also true when the field is missing).
    ``key:``       the field is missing, null, or empty (``""``, ``[]``, ``{}``).
    ``word``       free text: the word occurs, ignoring case, in the name or id.

    Keys use letters, digits, ``_``, ``.`` and ``-``. Double quotes keep spaces, ``:``, ``=``
    and parentheses in a value or in free text: ``name:"web 1"``, ``"hello world"``; inside
    quotes ``\\"`` is a quote and ``\\\\`` a backslash. A term that starts with a quote is free
    text. A search is at most 2000 characters; error positions count from 1.

sort
    Comma-separated fields (dotted keys allowed), ``-`` in front for descending:
    ``-created,name``. Text sorts ignoring case; missing and null values sort last in
    ascending order (first in descending); values of different types never fail to sort
    (booleans, then numbers, then text, then anything else). Items that tie keep their order.

start
    A non-negative integer offset into the matches (default 0), or the id of the item to
    start from (an error when no match has that id). Text of digits is always an offset.

limit
    How many items to return: 1 to the endpoint's maximum (usually 1000), default 100.

only
    Comma-separated fields (dotted keys allowed) to return instead of whole items; ``id`` is
    always returned, missing fields are left out: ``only=name,tags.env``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.errors import BadRequest

__all__ = ["Query", "Search", "apply", "page_info", "parse_query", "parse_search", "project"]

MAX_SEARCH_LENGTH = 2000
MAX_NESTING = 32
MAX_START_ID_LENGTH = 256
DEFAULT_TEXT_FIELDS: tuple[str, ...] = ("name", "id")

_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_INT = re.compile(r"-?[0-9]+")
_MISSING: Any = object()


@dataclass(frozen=True)
class _Field:
    key: str
    value: str  # as written; compared casefolded
    negate: bool = False

    def matches(self, doc: Mapping[str, Any], text_fields: Sequence[str]) -> bool:
        values = _resolve(doc, self.key)
        if self.value == "":
            found = not values or any(_is_empty(v) for v in values)
        else:
            found = any(_equals(v, self.value.casefold()) for v in values)
        return found != self.negate


@dataclass(frozen=True)
class _Text:
    value: str

    def matches(self, doc: Mapping[str, Any], text_fields: Sequence[str]) -> bool:
        needle = self.value.casefold()
        return any(_contains(v, needle) for f in text_fields for v in _resolve(doc, f))


@dataclass(frozen=True)
class _Group:
    is_or: bool  # OR of the children, else AND (an empty AND matches everything)
    children: tuple[_Node, ...]

    def matches(self, doc: Mapping[str, Any], text_fields: Sequence[str]) -> bool:
        results = (c.matches(doc, text_fields) for c in self.children)
        return any(results) if self.is_or else all(results)


_Node = _Field | _Text | _Group


def _resolve(doc: Mapping[str, Any], key: str) -> list[Any]:
    """The values at a dotted path; a list on the way fans out over its dict elements."""
    current: list[Any] = [doc]
    for part in key.split("."):
        found: list[Any] = []
        for value in current:
            items = value if isinstance(value, list | tuple) else [value]
            found.extend(i[part] for i in items if isinstance(i, Mapping) and part in i)
        current = found
    return current


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | tuple | Mapping) and not value)


def _equals(value: Any, target: str) -> bool:
    if isinstance(value, Mapping):
        return any(_text(k).casefold() == target for k in value)
    if isinstance(value, list | tuple):
        return any(_equals(v, target) for v in value)
    return value is not None and _text(value).casefold() == target


def _contains(value: Any, needle: str) -> bool:
    if isinstance(value, list | tuple):
        return any(_contains(v, needle) for v in value)
    if value is None or isinstance(value, Mapping):
        return False
    return needle in _text(value).casefold()


@dataclass(frozen=True)
class Search:
    """A parsed ``search`` expression; build it with :func:`parse_search`."""

    root: _Node

    def matches(
        self, doc: Mapping[str, Any], text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS
    ) -> bool:
        return self.root.matches(doc, text_fields)

    def equalities(self) -> dict[str, str]:
        """``key:value`` terms every match satisfies (values as written: compare them the way
        :meth:`matches` does, ignoring case); empty when the top level is an ``OR``."""
        root = self.root
        terms = root.children if isinstance(root, _Group) and not root.is_or else (root,)
        out: dict[str, str] = {}
        for term in terms:
            if isinstance(term, _Field) and not term.negate and term.value:
                out.setdefault(term.key, term.value)
        return out


def _bad_search(what: str, pos: int | None = None, hint: str = "") -> BadRequest:
    where = "" if pos is None else f" at position {pos}"
    return BadRequest(f"{what} in search{where}{': ' + hint if hint else ''}", field="search")


def _read_word(text: str, i: int) -> tuple[tuple[str, int, _Node | None], int]:
    """One word from ``text[i]`` on: an AND/OR token, or a term (kind "T") with its node."""
    pos, parts = i + 1, []  # parts: (text, quoted)
    while i < len(text) and not text[i].isspace() and text[i] not in "()":
        if text[i] == '"':
            quote, i, buf = i + 1, i + 1, []
            while i < len(text) and text[i] != '"':
                if text[i] == "\\" and text[i + 1 : i + 2] in ('"', "\\"):
                    i += 1
                buf.append(text[i])
                i += 1
            if i >= len(text):
                raise _bad_search("unbalanced quote", quote)
            parts.append(("".join(buf), True))
            i += 1
        else:
            word = re.match(r'[^\s()"]+', text[i:])
            assert word is not None
            parts.append((word.group(), False))
            i += word.end()
    if len(parts) == 1 and parts[0] in (("AND", False), ("OR", False)):
        return (parts[0][0], pos, None), i
    op = None if parts[0][1] else re.search(r"!=|[:=]", parts[0][0])
    if op is None:
        return ("T", pos, _Text("".join(p for p, _ in parts))), i
    key = parts[0][0][: op.start()]
    if not key:
        raise _bad_search("empty key", pos)
    if not _KEY.fullmatch(key):
        hint = "keys use letters, digits, '_', '.', '-' (quote free text with ':' or '=')"
        raise _bad_search(f"invalid key {key!r}", pos, hint)
    value = parts[0][0][op.end() :] + "".join(p for p, _ in parts[1:])
    return ("T", pos, _Field(key, value, negate=op.group() == "!=")), i


class _Parser:
    """or := and (OR and)*;  and := unary ([AND] unary)*;  unary := term | "(" or ")"."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, int, _Node | None]] = []  # (kind, position, term)
        i = 0
        while i < len(text):
            if text[i] in "()":
                self.tokens.append((text[i], i + 1, None))
            if text[i].isspace() or text[i] in "()":
                i += 1
                continue
            token, i = _read_word(text, i)
            self.tokens.append(token)
        self.i = self.depth = 0

    def peek(self) -> str:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else ""

    def parse(self) -> _Node:
        node = self.parse_or() if self.tokens else _Group(False, ())
        if self.peek():  # only a ")" stops parse_or early
            raise _bad_search(
                "unbalanced parenthesis", self.tokens[self.i][1], "')' closes nothing"
            )
        return node

    def operator(self) -> None:
        kind, pos, _ = self.tokens[self.i]
        self.i += 1
        if self.peek() not in ("T", "("):
            raise _bad_search(f"dangling {kind}", pos, "nothing on its right")

    def parse_or(self) -> _Node:
        children = [self.parse_and()]
        while self.peek() == "OR":
            self.operator()
            children.append(self.parse_and())
        return _combine(True, children)

    def parse_and(self) -> _Node:
        children = [self.parse_unary()]
        while self.peek() not in ("", ")", "OR"):
            if self.peek() == "AND":
                self.operator()
            children.append(self.parse_unary())
        return _combine(False, children)

    def parse_unary(self) -> _Node:
        kind, pos, node = self.tokens[self.i]  # callers make sure there is one
        self.i += 1
        if node is not None:
            return node
        if kind in ("AND", "OR"):
            raise _bad_search(f"dangling {kind}", pos, "nothing on its left")
        if kind == ")":
            raise _bad_search("unbalanced parenthesis", pos, "')' closes nothing")
        if self.depth >= MAX_NESTING:
            raise _bad_search("parentheses nested too deeply", pos, f"at most {MAX_NESTING}")
        if self.peek() == ")":
            raise _bad_search("empty parentheses", pos)
        if not self.peek():
            raise _bad_search("unbalanced parenthesis", pos, "'(' is not closed")
        self.depth += 1
        node = self.parse_or()
        self.depth -= 1
        if not self.peek():
            raise _bad_search("unbalanced parenthesis", pos, "'(' is not closed")
        self.i += 1  # the ")"
        return node


def _combine(is_or: bool, children: list[_Node]) -> _Node:
    if len(children) == 1:
        return children[0]
    flat: list[_Node] = []
    for c in children:
        flat.extend(c.children if isinstance(c, _Group) and c.is_or == is_or else (c,))
    return _Group(is_or, tuple(flat))


def parse_search(text: str) -> Search:
    """Parse a ``search`` value (see the module documentation); blank text matches everything."""
    if len(text) > MAX_SEARCH_LENGTH:
        raise BadRequest(
            f"search is too long ({len(text)} characters, at most {MAX_SEARCH_LENGTH})",
            field="search",
        )
    return Search(_Parser(text).parse())


@dataclass(frozen=True)
class Query:
    search: Search | None
    sort: tuple[tuple[str, bool], ...]
    start: int | str
    limit: int
    only: tuple[str, ...] | None


def _fields(text: str, name: str) -> list[str]:
    fields = [f.strip() for f in text.split(",")] if text else []
    for f in fields:
        bare = f[1:] if name == "sort" and f.startswith("-") else f
        if not _KEY.fullmatch(bare):
            what = f"invalid field {bare!r}" if bare else "empty field"
            hint = "fields use letters, digits, '_', '.', '-'; separate them with ','"
            raise BadRequest(f"{what} in {name}: {hint}", field=name)
    return fields


def _parse_start(text: str) -> int | str:
    if not text:
        return 0
    if _INT.fullmatch(text):
        if text.startswith("-"):
            raise BadRequest("start must be a non-negative integer or an id", field="start")
        if len(text.lstrip("0")) > 18:
            raise BadRequest("start is too large", field="start")
        return int(text)
    if len(text) > MAX_START_ID_LENGTH:
        raise BadRequest(f"start id is too long (at most {MAX_START_ID_LENGTH})", field="start")
    return text


def _parse_limit(text: str, max_limit: int, default_limit: int) -> int:
    if not text:
        return min(default_limit, max_limit)
    if not _INT.fullmatch(text) or len(text) > 20 or not 1 <= int(text) <= max_limit:
        message = f"limit must be an integer from 1 to {max_limit} (the maximum), not {text[:20]!r}"
        raise BadRequest(message, field="limit")
    return int(text)


def parse_query(
    params: Mapping[str, str], *, max_limit: int = 1000, default_limit: int = 100
) -> Query:
    """Parse and validate the listing parameters; other parameters are ignored."""
    search = params.get("search", "")
    sort = _fields(params.get("sort", "").strip(), "sort")
    only = _fields(params.get("only", "").strip(), "only")
    return Query(
        search=parse_search(search) if search.strip() else None,
        sort=tuple((f.removeprefix("-"), f.startswith("-")) for f in sort),
        start=_parse_start(params.get("start", "").strip()),
        limit=_parse_limit(params.get("limit", "").strip(), max_limit, default_limit),
        only=tuple(dict.fromkeys(only)) if only else None,
    )


def _get(doc: Mapping[str, Any], key: str) -> Any:
    value: Any = doc
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _sort_key(key: str) -> Callable[[Mapping[str, Any]], tuple[int, Any]]:
    def of(doc: Mapping[str, Any]) -> tuple[int, Any]:
        value = _get(doc, key)
        if value is _MISSING or value is None:
            return (4, 0)
        if isinstance(value, bool):
            return (0, int(value))
        if isinstance(value, int | float):
            return (1, value)
        if isinstance(value, str):
            return (2, (value.casefold(), value))
        return (3, repr(value))

    return of


def project(doc: Mapping[str, Any], only: tuple[str, ...] | None) -> dict[str, Any]:
    """A shallow copy of ``doc`` with only the ``only`` fields (all when None) and ``id``."""
    if only is None:
        return dict(doc)
    wanted = ("id", *only)
    out: dict[str, Any] = {}
    for key in wanted:
        parts = key.split(".")
        if any(".".join(parts[:n]) in wanted for n in range(1, len(parts))):
            continue  # an enclosing field is returned whole
        value = _get(doc, key)
        if value is _MISSING:
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})  # only dicts made here: no ancestor is wanted
        target[parts[-1]] = value
    return out


def page_info(
    total: int, returned: int, query: Query, *, start: int | None = None
) -> dict[str, Any]:
    """The ``meta`` of a list answer, for callers that page themselves. ``start`` is the offset
    used; it is required when ``query.start`` is an id."""
    if start is None:
        if isinstance(query.start, str):
            raise ValueError("page_info needs the offset when the query starts at an id")
        start = query.start
    sort = ",".join(("-" if desc else "") + key for key, desc in query.sort)
    return {"total": total, "returned": returned, "sort": sort, "start": start}


def apply(
    docs: Iterable[Mapping[str, Any]],
    query: Query,
    *,
    text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Filter, sort, page and project ``docs``; returns ``(data, meta)``."""
    search = query.search
    matched = [d for d in docs if search is None or search.matches(d, text_fields)]
    for key, desc in reversed(query.sort):
        matched.sort(key=_sort_key(key), reverse=desc)
    if isinstance(query.start, str):
        offset = next((i for i, d in enumerate(matched) if _text(d.get("id")) == query.start), None)
        if offset is None:
            raise BadRequest(f"start: no result has the id {query.start!r}", field="start")
    else:
        offset = query.start
    data = [project(d, query.only) for d in matched[offset : offset + query.limit]]
    return data, page_info(len(matched), len(data), query, start=offset)
