"""
C{SSL_CTX_ctrl} of the OpenSSL that pyOpenSSL uses, which its binding
does not expose: the one way to give several processes' contexts the same
session ticket keys (C{SSL_CTRL_SET_TLSEXT_TICKET_KEYS}).

That OpenSSL is linked into C{cryptography}'s C{_rust} extension, whose
OpenSSL symbols are local (not exported) but listed in its ELF symbol
table.  L{ssl_ctx_ctrl} reads that table once, places the function by the
load address of an exported symbol of the same file, and checks the
result against a value the binding does expose before trusting it.  Not
found (a stripped build, another platform): None, and callers go without.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.bindings import _rust
from OpenSSL import SSL
from OpenSSL._util import ffi, lib

#: C{SSL_CTX_ctrl} command numbers (ssl.h).
SSL_CTRL_GET_SESS_CACHE_MODE = 45
SSL_CTRL_GET_TLSEXT_TICKET_KEYS = 58
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59

Ctrl = Callable[[int, int, int, Any], int]

_found: list[Ctrl | None] = []


def elf_functions(data: bytes, wanted: Iterable[bytes]) -> dict[bytes, int]:
    """The addresses (relative to the load address) of the functions named
    C{wanted} in the symbol table of the 64-bit little-endian ELF file
    C{data}; those absent are missing from the result."""
    want = set(wanted)
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    found: dict[bytes, int] = {}
    for section in sections:
        if section[1] != 2:  # SHT_SYMTAB
            continue
        strings = sections[section[6]][4]
        offset, size, entry = section[4], section[5], section[9]
        for i in range(size // entry):
            name, info, _other, _index, value, _size = struct.unpack_from(
                "<IBBHQQ", data, offset + i * entry)
            if value and info & 0xF == 2:  # STT_FUNC
                start = strings + name
                symbol = data[start:data.index(b"\0", start)]
                if symbol in want:
                    found[symbol] = value
    return found


def context_pointer(context: Any) -> int:
    """The C{SSL_CTX *} of a pyOpenSSL C{Context}, as an integer."""
    return int(ffi.cast("uintptr_t", context._context))


def _lookup() -> Ctrl | None:
    path = _rust.__file__
    anchor = b"PyInit__rust"  # exported by the same file: gives the load address
    with open(path, "rb") as f:
        symbols = elf_functions(f.read(), (anchor, b"SSL_CTX_ctrl"))
    if len(symbols) != 2:
        return None
    library = ctypes.CDLL(path)  # the already loaded extension, not a second copy
    loaded = ctypes.cast(getattr(library, anchor.decode()), ctypes.c_void_p).value
    if not loaded:
        return None
    prototype = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                 ctypes.c_void_p)
    ctrl = prototype(loaded - symbols[anchor] + symbols[b"SSL_CTX_ctrl"])
    # A wrong address would answer something else (or crash, which the
    # symbol table of the very file that is loaded rules out).
    probe = SSL.Context(SSL.TLS_SERVER_METHOD)
    for mode in (lib.SSL_SESS_CACHE_SERVER, lib.SSL_SESS_CACHE_OFF):
        lib.SSL_CTX_set_session_cache_mode(probe._context, mode)
        if ctrl(context_pointer(probe), SSL_CTRL_GET_SESS_CACHE_MODE, 0, None) != mode:
            return None
    return ctrl


def ssl_ctx_ctrl() -> Ctrl | None:
    """C{SSL_CTX_ctrl(ctx, cmd, larg, parg)} of pyOpenSSL's OpenSSL (the
    context as L{context_pointer}), or None where it cannot be found."""
    if not _found:
        try:
            _found.append(_lookup())
        except (OSError, ImportError, AttributeError, ValueError, struct.error):
            _found.append(None)
    return _found[0]
