"""The native net through ``torch.export`` and AOTInductor, for serving without Python.

``export_logits(net)`` and ``export_decode(net)`` export the inference forward of an
``arwrap_cpp.TransformerWrapper`` with a dynamic batch and sequence length (and cache
length): their graphs hold our operators, ``torch.ops.arwrap.transformer_wrapper_logits`` /
``transformer_wrapper_decode``, whose Meta kernels keep the sizes symbolic.
``compile_package(net, path)`` compiles the decoding step ahead of time into a ``.pt2``
package that ``torch._inductor.aoti_load_package`` (Python, after ``import arwrap_cpp``) or
``torch::inductor::AOTIModelPackageLoader`` (C++, with libarwrap linked:
examples/deploy) runs. From a checkpoint of ``arwrap-train``::

    python -m arwrap_cpp.export CHECKPOINT OUT.pt2

The package's one program is the decoding step (:class:`DecodeStep`):
``(tokens (b, n), k_cache, v_cache, offset) -> (logits (b, n, num_tokens), k_cache, v_cache)``;
the prompt's step is the same program with empty caches. Its metadata holds the net's
configuration string (``METADATA_CONFIG``), so a server knows the cache shapes and the window.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .checkpoint import load_model
from .transformer import TransformerWrapper

#: the package metadata keys: the configuration string and the package's layout version
METADATA_CONFIG = "arwrap.config"
METADATA_FORMAT = "arwrap.format"
FORMAT = "arwrap-decode-1"


def _check_net(where: str, net) -> None:
    if not isinstance(net, TransformerWrapper):
        raise ValueError(f"{where}: net must be an arwrap_cpp.TransformerWrapper (the native net), got "
                         f"{type(net).__name__}")


class DecodeStep(nn.Module):
    """The net's decoding step as a module's forward (what ``torch.export`` exports):
    ``forward(tokens, k_cache, v_cache, offset)`` is ``net.decode(...)``."""

    def __init__(self, net: TransformerWrapper):
        super().__init__()
        _check_net("DecodeStep", net)
        self.net = net

    def forward(self, tokens: Tensor, k_cache: Tensor, v_cache: Tensor, offset: Tensor):
        return self.net.decode(tokens, k_cache, v_cache, offset)


def _example_tokens(net: TransformerWrapper, batch: int, seq_len: int) -> Tensor:
    # 0 and 1 would specialise a dimension: the examples are at least 2
    return torch.zeros(max(batch, 2), max(min(seq_len, net.max_seq_len), 2), dtype=torch.long,
                       device=net.token_emb.emb.weight.device)


def _seq_dim(net: TransformerWrapper, name: str):
    # absolute positions cap the sequence at max_seq_len; rotary ones do not
    return torch.export.Dim(name, min=1, max=net.max_seq_len) if net.use_abs_pos_emb else torch.export.Dim(name, min=1)


def export_logits(net: TransformerWrapper, batch: int = 2, seq_len: int = 8) -> torch.export.ExportedProgram:
    """``torch.export`` of ``net``'s inference forward (eval mode): ``tokens (b, n) -> logits
    (b, n, num_tokens)``, ``b`` and ``n`` dynamic (``n <= max_seq_len`` with absolute positions).
    ``batch`` and ``seq_len`` only size the example input."""
    _check_net("export_logits", net)
    net.eval()
    tokens = _example_tokens(net, batch, seq_len)
    dims = {0: torch.export.Dim("batch"), 1: _seq_dim(net, "seq_len")}
    return torch.export.export(net, (tokens,), dynamic_shapes=(dims,))


def export_decode(net: TransformerWrapper, batch: int = 2, seq_len: int = 4,
                  cached: int = 3) -> torch.export.ExportedProgram:
    """``torch.export`` of one decoding step (:class:`DecodeStep`), the batch, the new
    positions and the cached ones dynamic (the cache may be empty: the prompt's step)."""
    _check_net("export_decode", net)
    net.eval()
    tokens = _example_tokens(net, batch, seq_len)
    d = net.attn_layers
    shape = (d.depth, tokens.shape[0], d.heads, max(cached, 2), d.config["attn_dim_head"])
    w = net.token_emb.emb.weight
    k_cache, v_cache = w.new_zeros(shape), w.new_zeros(shape)
    offset = torch.zeros((), dtype=torch.long, device=w.device)
    b = torch.export.Dim("batch")
    cache_len = torch.export.Dim("cached", min=0, max=net.max_seq_len) if net.use_abs_pos_emb else \
        torch.export.Dim("cached", min=0)
    cache_dims = {1: b, 3: cache_len}
    return torch.export.export(DecodeStep(net), (tokens, k_cache, v_cache, offset),
                               dynamic_shapes=({0: b, 1: _seq_dim(net, "new")}, cache_dims, cache_dims, None))


def compile_package(net: TransformerWrapper, package_path, *, exported: Optional[torch.export.ExportedProgram] = None,
                    inductor_configs: Optional[dict] = None) -> str:
    """Compiles ``net``'s decoding step (``exported``: :func:`export_decode`'s program, made
    here when not given) with AOTInductor into the package ``package_path`` (a ``.pt2`` file);
    returns its path. The metadata records the net's configuration string
    (``METADATA_CONFIG``). Slow: AOTInductor compiles C++ (tens of seconds for any net on
    2 cores; docs/deploy.md has the figures)."""
    _check_net("compile_package", net)
    package_path = os.fspath(package_path)
    if not package_path.endswith(".pt2"):
        raise ValueError(f"compile_package: package_path must end in .pt2 (AOTInductor's package), got {package_path!r}")
    ep = exported if exported is not None else export_decode(net)
    configs = dict(inductor_configs or {})
    configs["aot_inductor.metadata"] = {**configs.get("aot_inductor.metadata", {}),
                                        METADATA_CONFIG: net.config, METADATA_FORMAT: FORMAT}
    return torch._inductor.aoti_compile_and_package(ep, package_path=package_path, inductor_configs=configs)


def crop_cache(max_seq_len: int, k_cache: Tensor, v_cache: Tensor, offset: int):
    """Before the next step: a cache longer than ``max_seq_len - 1`` loses its oldest positions
    and ``offset`` counts them, as ``generate`` slides its window (keys keep their rotation)."""
    cached = k_cache.shape[3]
    if cached <= max_seq_len - 1:
        return k_cache, v_cache, offset
    drop = cached - (max_seq_len - 1)
    return k_cache[:, :, :, drop:].contiguous(), v_cache[:, :, :, drop:].contiguous(), offset + drop


def greedy_decode(step, net: TransformerWrapper, prompts: Tensor, seq_len: int) -> Tensor:
    """Greedy decoding through a decoding step ``step(tokens, k_cache, v_cache, offset)`` (the
    exported program, the loaded package or ``net.decode``): the ``seq_len`` tokens after
    ``prompts`` (b, t), the same as ``net.generate(prompts, seq_len, temperature=0.0)`` (the
    prompt cropped to ``max_seq_len``, then the window sliding). The loop examples/deploy
    runs in C++."""
    _check_net("greedy_decode", net)
    if prompts.dim() != 2 or prompts.dtype != torch.long:
        raise ValueError(f"greedy_decode: prompts must be int64 (batch, prompt_len), got {prompts.dtype} "
                         f"{tuple(prompts.shape)}")
    k_cache, v_cache = net.empty_cache(prompts.shape[0])
    tokens, offset, out = prompts[:, -net.max_seq_len:], 0, []
    for _ in range(seq_len):
        k_cache, v_cache, offset = crop_cache(net.max_seq_len, k_cache, v_cache, offset)
        logits, k_cache, v_cache = step(tokens, k_cache, v_cache, torch.tensor(offset))
        tokens = logits[:, -1].argmax(-1, keepdim=True)
        out.append(tokens)
    return torch.cat(out, 1) if out else prompts.new_zeros(prompts.shape[0], 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m arwrap_cpp.export",
        description="Compiles the decoding step of an arwrap-train checkpoint (or arwrap_cpp.save_checkpoint's) "
                    "with torch.export + AOTInductor into a .pt2 package that examples/deploy serves from C++.")
    parser.add_argument("checkpoint", help="the checkpoint file (arwrap-train --checkpoint PATH)")
    parser.add_argument("package", help="the package to write (a .pt2 file)")
    args = parser.parse_args(argv)
    # torch 2.13's own pytree code warns while exporting (nothing the user can act on)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    try:
        net = load_model(args.checkpoint)
        start = time.perf_counter()
        ep = export_decode(net)
        exported = time.perf_counter() - start
        path = compile_package(net, args.package, exported=ep)
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m arwrap_cpp.export: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - start
    params = sum(p.numel() for p in net.parameters())
    print(f"model: {net.config} ({params / 1e6:.2f} M parameters)")
    print(f"exported in {exported:.1f} s, exported and compiled in {total:.1f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
