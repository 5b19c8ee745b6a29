"""Text from the wire made safe to show to a person or hand to a log parser: control characters escaped visibly.

A user name, an argv, a path, an audit field or a SIEM's reply can carry control characters: ESC starts the
ANSI/OSC sequences that recolour, retitle, clear or rewrite a terminal (and OSC 52 writes its clipboard); BEL
rings; NUL cuts C strings short; the C1 controls (U+0080–U+009F, U+009B is a one-character CSI) act like ESC
sequences on many terminals; Unicode line separators and bidi overrides reorder or split what is shown.

:func:`escape_controls` is the one sanitizer: every C0 control, DEL, C1 control, U+2028/U+2029 and bidi
embedding/override/isolate character becomes a visible escape (``\\x1b``, ``\\n``, ``\\u202e``) unless the
caller keeps it (a renderer keeps the newlines it writes itself). Every human renderer (``cadr/render.py``,
``cadr scan``, ``cadr incidents tail``, ``cadr profiles show``, ``cadr query --format table``, error messages
and logs) and the CEF and syslog forwarders use it; :func:`escape_json_controls` does the same for JSON text,
where JSON itself already escapes C0.

Backslashes are left as they are, so ``\\x1b`` typed by a user and an escaped ESC read alike: the aim is that
nothing reaches a terminal raw, not a reversible encoding.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL_CHARS", "escape_controls", "escape_json_controls"]

#: the characters :func:`escape_controls` escapes (as a regular-expression character class)
CONTROL_CHARS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROLS = re.compile(f"[{CONTROL_CHARS}]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# In JSON text C0 is already escaped (a JSON string cannot hold it raw); DEL, C1 and the Unicode controls are
# not, and a UTF-8 sequence for them only ever appears inside strings, so escaping them keeps the JSON valid.
_JSON_CONTROLS = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9\xaa-\xae]|\xe2\x81[\xa6-\xa9]")


def _visible(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every control character escaped visibly, except those in ``keep`` (e.g. ``"\\n"``)."""
    if not _CONTROLS.search(text):
        return text  # the common case: nothing to do, no copy
    if keep:
        return _CONTROLS.sub(lambda m: m.group() if m.group() in keep else _visible(m.group()), text)
    return _CONTROLS.sub(lambda m: _visible(m.group()), text)


def escape_json_controls(data: bytes) -> bytes:
    """JSON text (UTF-8) with DEL, C1 and the Unicode line/bidi controls as ``\\uXXXX`` escapes."""
    if not _JSON_CONTROLS.search(data):
        return data
    return _JSON_CONTROLS.sub(lambda m: f"\\u{ord(m.group().decode()):04x}".encode(), data)
