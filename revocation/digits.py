"""Numbers read from outside (headers, configuration, store metadata, lease holders, /proc).

``str.isdigit`` accepts '²', '٣' and other Unicode digits, which ``int`` refuses: a check by
``isdigit`` alone lets such a value through to a ValueError (a 500, a crash) instead of the
answer meant for a value that is not a number. Every such check is made here.
"""

from __future__ import annotations

_PORT_DIGITS = 5


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is one or more ASCII digits (no sign, space or Unicode digit)."""
    return text.isascii() and text.isdigit()


def port_number(text: str) -> int | None:
    """``text`` as a TCP port (1 to 65535), or None when it is not one."""
    if not ascii_digits(text) or len(text) > _PORT_DIGITS:
        return None
    port = int(text)
    return port if 0 < port < 65536 else None
