"""The C++ options tables as Python defaults: the lowest layer above _C.

Each options struct in C++ has one table of its fields (``_C.wrapper_fields()``,
``_C.autoregressive_loss_fields()``, ``_C.generate_fields()``, ``_C.beam_search_fields()``):
``(name, type, default)``, the default written as a literal (``0``, ``0.05``, ``True``,
``None``, ``"top_k"``) read from a default-constructed struct, whose initialisers are the one
place a default is written. The net's configuration has its own table
(``_C.transformer_fields()``, read in transformer.py).
"""
from __future__ import annotations

import ast

from . import _C


def defaults(fields) -> dict:
    """{name: default} of one C++ options table."""
    return {name: ast.literal_eval(default) for name, _, default in fields}


#: The defaults several C++ options structs and operator schemas share (arwrap/defaults.h).
SHARED_DEFAULTS = dict(_C.shared_defaults())
#: The target that is never scored, for every operator and the wrapper.
IGNORE_INDEX = SHARED_DEFAULTS["ignore_index"]
