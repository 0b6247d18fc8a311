"""What the bad-input suite (test_bad_input.py) and the odd-input suite (test_odd_input.py)
share: the small nets and wrappers, input makers, and the case counter that prints how many
cases ran at the end of the session."""
import functools
import warnings

import pytest
import torch

import arwrap_cpp
from arwrap_cpp import AutoregressiveWrapper

OPS = torch.ops.arwrap
V, SEQ, DIM = 17, 9, 16
_RAN = {"bad": 0, "works": 0, "large": 0, "cpp": 0}


class _CountReport:
    """Adds the number of cases run to pytest's terminal summary (registered by the fixture below,
    so this module needs nothing in conftest.py)."""

    @staticmethod
    def pytest_terminal_summary(terminalreporter):
        if sum(_RAN.values()):
            terminalreporter.write_line(
                f"test_bad_input: {sum(_RAN.values())} bad-input cases run ({_RAN['bad']} bad inputs raising a named "
                f"error, {_RAN['works']} odd-but-valid inputs checked against the reference, {_RAN['large']} 64-bit "
                f"indexing cases, {_RAN['cpp']} C++ API cases)")


@pytest.fixture(scope="module", autouse=True)
def _count_cases(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("arwrap-bad-input-count"):
        pm.register(_CountReport(), "arwrap-bad-input-count")
    yield


@functools.lru_cache(maxsize=None)
def _net_state():
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(0)
    return TransformerWrapper(num_tokens=V, max_seq_len=SEQ, attn_layers=Decoder(dim=DIM, depth=1, heads=2))


def net():
    import copy

    return copy.deepcopy(_net_state())


@functools.lru_cache(maxsize=None)
def _native_state():
    torch.manual_seed(0)
    return arwrap_cpp.TransformerWrapper(num_tokens=V, max_seq_len=SEQ,
                                         attn_layers=arwrap_cpp.Decoder(dim=DIM, depth=1, heads=2, attn_dim_head=8))


def native():
    import copy

    return copy.deepcopy(_native_state())


def wrap(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoregressiveWrapper(net(), **kw)


def toks(b=2, n1=SEQ):
    return torch.randint(0, V, (b, n1), generator=torch.Generator().manual_seed(1))


def with_token(value, at=(0, 3)):
    x = toks()
    x[at] = value
    return x


@functools.lru_cache(maxsize=None)
def _scripted():
    from scripted_net import scripted_decoder  # a TorchScript net (vocabulary 40): the C++ TorchScriptNet path

    return scripted_decoder()


def script_wrap():
    return AutoregressiveWrapper(_scripted())


Z = lambda *s: torch.randn(*s)  # noqa: E731
T = lambda *s, v=10: torch.randint(0, v, s)  # noqa: E731
H, W, B = (lambda: torch.randn(4, 8)), (lambda: torch.randn(10, 8)), (lambda: torch.randn(10))
