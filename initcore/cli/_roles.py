"""``--roles``: the roles of a model's parameters on the command line, as ``init.apply(..., roles=)`` takes
them in Python.

    --roles 'PATTERN=ROLE,PATTERN=ROLE,...'     entries separated by commas
    --roles FILE                                 one PATTERN=ROLE a line; blank lines and # comments ignored

PATTERN is an fnmatch pattern over full parameter names (``*.c_proj.weight``); the first that matches a
parameter wins. ROLE is a role name (``initcore.models.ROLES``), optionally followed by ``:``-separated
details in any order: the names of the matrices packed along the output dimension (``q,k,v``), or their
number (``3``), and ``transposed`` for a weight stored (fan_in, fan_out), as Hugging Face's ``Conv1D``.
So GPT-2's fused attention input is ``*.c_attn.weight=qkv:q,k,v:transposed``. A comma inside an entry's
parts does not start a new entry: a new entry is a piece that contains ``=``.

Everything wrong is a ValueError (``ArgumentTypeError`` from the option type) whose one line says what is
valid.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Mapping

from initcore.models.roles import ROLES, Role

TRANSPOSED = "transposed"
SYNTAX = "PATTERN=ROLE[:PARTS][:transposed], e.g. '*.c_attn.weight=qkv:q,k,v:transposed'"

RoleSpec = str | Role | tuple  # what init.apply's roles mapping takes: a name, (name, chunks) or a Role


def _close(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def role_spec(text: str) -> RoleSpec:
    """``ROLE[:PARTS|:N][:transposed]`` as ``init.apply`` takes it.

    >>> role_spec("attn_out"), role_spec("qkv:3")
    ('attn_out', ('qkv', 3))
    >>> role_spec("qkv:q,k,v:transposed")
    Role(role='qkv', parts=('q', 'k', 'v'), transposed=True)
    """
    name, *details = [part.strip() for part in text.split(":")]
    if name not in ROLES:
        raise ValueError(f"unknown role {name!r}; valid: {', '.join(ROLES)}{_close(name, ROLES)}")
    parts: tuple[str, ...] = ()
    chunks = 0
    transposed = None
    for detail in details:
        if detail == TRANSPOSED and transposed is None:
            transposed = True
        elif detail.isdigit() and not parts and not chunks and int(detail) >= 1:
            chunks = int(detail)
        elif "," in detail or detail.isidentifier() and detail != TRANSPOSED and not parts and not chunks:
            names = [p.strip() for p in detail.split(",")]
            if not all(p.isidentifier() for p in names) or len(set(names)) != len(names):
                raise ValueError(f"role {text!r}: parts are distinct names separated by commas (q,k,v), got "
                                 f"{detail!r}")
            parts = tuple(names)
        else:
            raise ValueError(f"role {text!r}: after the role name come its parts (q,k,v) or their number (3), and "
                             f"'transposed', each once, separated by ':'; got {detail!r}"
                             f"{_close(detail, [TRANSPOSED])}")
    if parts or transposed:
        if chunks:
            raise ValueError(f"role {text!r}: with 'transposed', name the packed matrices (q,k,v) instead of "
                             "counting them")
        return Role(name, parts=parts, transposed=transposed)
    return (name, chunks) if chunks else name


def _entries(text: str) -> list[str]:
    """Split ``P=R,P=R:q,k,v`` on the commas that start an entry (a piece with '=')."""
    entries: list[str] = []
    for piece in text.split(","):
        if "=" in piece or not entries:
            entries.append(piece)
        else:
            entries[-1] += "," + piece
    return entries


def parse_roles(text: str | Mapping[str, RoleSpec] | None, where: str = "--roles") -> Mapping[str, RoleSpec] | None:
    """``PATTERN=ROLE`` entries separated by commas, as a mapping for ``init.apply(roles=)`` (the first entry
    for a pattern wins); text without '=' names a file of them (``read_roles``); None or a mapping stays.

    >>> parse_roles("*.c_proj.weight=attn_out,*.c_attn.weight=qkv:q,k,v:transposed")
    {'*.c_proj.weight': 'attn_out', '*.c_attn.weight': Role(role='qkv', parts=('q', 'k', 'v'), transposed=True)}
    """
    if text is None or isinstance(text, Mapping):  # None, or parsed already (the option type's result)
        return text
    return _parse_entries(text, where) if "=" in text else read_roles(text)


def _parse_entries(text: str, where: str) -> dict[str, RoleSpec]:
    mapping: dict[str, RoleSpec] = {}
    for entry in _entries(text):
        pattern, sep, spec = (s.strip() for s in entry.partition("="))
        stray = spec.split(":")[0].partition(",")[2]  # hidden,b: a piece after the role that is not PATTERN=ROLE
        if not sep or not pattern or not spec or stray:
            raise ValueError(f"{where}: {(stray or entry).strip()!r} is not {SYNTAX}")
        try:
            mapping.setdefault(pattern, role_spec(spec))
        except ValueError as e:
            raise ValueError(f"{where}: {pattern}: {e}") from None
    return mapping


def read_roles(path: str | os.PathLike) -> dict[str, RoleSpec]:
    """The mapping of a roles file: one ``PATTERN=ROLE`` a line (a line may hold several, separated by
    commas); blank lines and ``#`` comments ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ValueError(f"--roles {path}: no such file; give a file of PATTERN=ROLE lines, or the entries "
                         f"themselves ({SYNTAX})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--roles {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    mapping: dict[str, RoleSpec] = {}
    for number, line in enumerate(lines, 1):
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            for pattern, spec in _parse_entries(line, f"--roles {path}, line {number}").items():
                mapping.setdefault(pattern, spec)
    if not mapping:
        raise ValueError(f"--roles {path}: no PATTERN=ROLE line in it ({SYNTAX})")
    return mapping


def roles(text: str) -> dict[str, RoleSpec]:
    """The ``--roles`` option type: entries when the text has '=', else a file of them."""
    try:
        return parse_roles(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--roles: ")) from None


class MergeRoles(argparse.Action):
    """A repeated ``--roles`` adds to the mapping (the first entry for a pattern wins), and marks the option
    as given for ``initcore.cli._common.given``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        merged = dict(getattr(namespace, self.dest, None) or {})
        for pattern, spec in values.items():
            merged.setdefault(pattern, spec)
        setattr(namespace, self.dest, merged)
        namespace.given_options = {*getattr(namespace, "given_options", ()), self.option_strings[-1]}


HELP = ("roles of parameters no module declares, for --init: 'PATTERN=ROLE,...' (fnmatch over full parameter "
        "names; the first match wins) or a FILE of PATTERN=ROLE lines (# comments); ROLE is one of "
        f"{', '.join(ROLES)}, optionally :q,k,v (packed matrices, or :3) and :transposed (stored (in, out), as "
        "Hugging Face's Conv1D), e.g. '*.c_attn.weight=qkv:q,k,v:transposed'; repeatable")


def add_roles_option(group) -> None:
    """``--roles`` on a parser or argument group (``args.roles``: a mapping, or None when not given)."""
    group.add_argument("--roles", type=roles, action=MergeRoles, default=None, metavar="PATTERN=ROLE,...|FILE",
                       help=HELP)


# The library speaks Python (init.apply's roles= argument); on the command line the same advice is --roles.
_PYTHON_TO_CLI = (
    (re.compile(r"roles=\{'([^']*)': '([^']*)'\}"), r"--roles '\1=\2'"),
    (re.compile(r"\{'([^']*)': '([^']*)'\}"), r"--roles '\1=\2'"),
    (re.compile(r"\bPass roles=\{pattern: role\}"), "Give --roles PATTERN=ROLE"),
    (re.compile(r"\bpass roles=\{pattern: role\}"), "give --roles PATTERN=ROLE"),
    (re.compile(r"roles=\{pattern: role\}"), "--roles PATTERN=ROLE"),
    (re.compile(r"^roles pattern "), "--roles pattern "),
)


def cli_words(message: str) -> str:
    """A library message about roles, with its ``roles={...}`` advice said as ``--roles`` options.

    >>> cli_words("parameter 'w' has no role; declare it in its module's ROLES, or pass roles={pattern: role}")
    "parameter 'w' has no role; declare it in its module's ROLES, or give --roles PATTERN=ROLE"
    """
    for pattern, replacement in _PYTHON_TO_CLI:
        message = pattern.sub(replacement, message)
    return message


def describe_roles(mapping: Mapping[str, RoleSpec]) -> str:
    """The mapping as ``--roles`` text (entries separated by ", ", where a header line may wrap)."""
    def one(spec: RoleSpec) -> str:
        if isinstance(spec, Role):
            return ":".join([spec.role, *([",".join(spec.parts)] if spec.parts else []),
                             *([TRANSPOSED] if spec.transposed else [])])
        return f"{spec[0]}:{spec[1]}" if isinstance(spec, tuple) else spec
    return ", ".join(f"{pattern}={one(spec)}" for pattern, spec in mapping.items())


__all__ = ["HELP", "MergeRoles", "add_roles_option", "cli_words", "describe_roles", "parse_roles", "read_roles",
           "role_spec", "roles"]
