"""Checkpoints shared with the C++ trainer ``arwrap-train`` (examples/train).

A checkpoint is one file that ``torch.load`` reads (default ``weights_only=True``)
and ``torch::pickle_load`` reads in C++: a dict

=================  ===========================================================
``format``         ``"arwrap-checkpoint-1"``
``config``         the net's configuration string (``TransformerWrapper.config``,
                   C++ ``TransformerWrapperOptions::to_string()``)
``step``           optimizer steps done
``seed``           the run's ``--seed`` (batches of step ``s`` come from ``(seed, s)``)
``model``          the state dict, with x-transformers' names
``optimizer_name`` ``"adam"``, ``"adamw"`` or ``""`` (no optimizer state)
``optimizer``      ``{"<param>.exp_avg" | "<param>.exp_avg_sq" | "<param>.step": Tensor}``
``train_args``     ``"flag=value"`` lines (the trainer's flags, without ``--``)
=================  ===========================================================

``load_model(path)`` gives an ``arwrap_cpp.TransformerWrapper`` (or, with
``kind="x_transformers"``, x-transformers' own ``TransformerWrapper``) with the weights;
``save_checkpoint`` writes a Python-trained net (and its Adam/AdamW moments) so that
``arwrap-train --checkpoint PATH --resume`` continues it or ``--sample`` samples from it.

The trainer's data and validation loss are reproducible here: ``read_corpus`` reads a
file or directory as the C++ program does, the validation split is the last 10% of its
bytes, and ``validation_loss`` scores the same windows (the first ``windows``
non-overlapping ``seq_len + 1``-byte windows of the validation split) in the same batches.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import nn

from . import _C
from .transformer import NATIVE_ONLY_DECODER_OPTIONS, Decoder, TransformerWrapper, parse_config

FORMAT = "arwrap-checkpoint-1"

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------ files


def load_checkpoint(path: PathLike) -> dict:
    """Reads a checkpoint written by ``arwrap-train`` or :func:`save_checkpoint`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one that is
    truncated, corrupt or not an arwrap checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip / unpickling errors of every kind
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable arwrap checkpoint (truncated or corrupt?): {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = f"format {ckpt.get('format')!r}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise ValueError(f"{path} is not an arwrap checkpoint ({what}; expected a dict with format {FORMAT!r})")
    for key, typ in (("config", str), ("step", int), ("model", dict)):
        if not isinstance(ckpt.get(key), typ):
            raise ValueError(f"{path} is not a valid arwrap checkpoint: '{key}' missing or not a {typ.__name__}")
    ckpt.setdefault("seed", 0)
    ckpt.setdefault("optimizer_name", "")
    ckpt.setdefault("optimizer", {})
    ckpt.setdefault("train_args", "")
    return ckpt


def _atomic_save(obj, path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path: PathLike, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    step: int = 0, *, config: Optional[str] = None, seed: int = 0,
                    train_args: Optional[dict] = None) -> None:
    """Writes ``model`` (an ``arwrap_cpp.TransformerWrapper``, or an x-transformers one
    together with the ``config`` string it matches) as a checkpoint ``arwrap-train`` resumes.

    ``optimizer``: a ``torch.optim.Adam`` or ``AdamW`` over the model's parameters; its
    moments, its learning rate and weight decay go into the file. ``train_args``: extra
    trainer flags to record, e.g. ``{"data": "corpus.txt", "batch": 16}``. Written
    atomically (a temporary file, then a rename).
    """
    if config is None:
        config = getattr(model, "config", None)
        if not isinstance(config, str):
            raise ValueError("save_checkpoint: the model has no .config string (an arwrap_cpp.TransformerWrapper "
                             "has one); pass config= for another net with the same parameters")
    config = _C.transformer_config(config)  # validated and canonical
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    # the same names and shapes as the C++ net of this configuration, or a ValueError now
    reference = build_model(config, "arwrap")
    try:
        reference.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"save_checkpoint: the model's state does not match config {config!r}: "
                         f"{str(e).splitlines()[0]}") from None

    args = dict(train_args or {})
    opt_name, opt_state = "", {}
    if optimizer is not None:
        if isinstance(optimizer, torch.optim.AdamW):
            opt_name = "adamw"
        elif isinstance(optimizer, torch.optim.Adam):
            opt_name = "adam"
        else:
            raise ValueError(f"save_checkpoint: optimizer must be torch.optim.Adam or AdamW, got "
                             f"{type(optimizer).__name__}")
        group = optimizer.param_groups[0]
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("save_checkpoint: amsgrad / maximize have no counterpart in arwrap-train")
        names = {id(p): n for n, p in model.named_parameters()}
        for g in optimizer.param_groups:
            for p in g["params"]:
                if id(p) not in names:
                    raise ValueError("save_checkpoint: the optimizer holds a parameter that is not the model's")
                s = optimizer.state.get(p)
                if not s:
                    continue
                n = names[id(p)]
                opt_state[f"{n}.exp_avg"] = s["exp_avg"].detach().cpu().contiguous().clone()
                opt_state[f"{n}.exp_avg_sq"] = s["exp_avg_sq"].detach().cpu().contiguous().clone()
                opt_state[f"{n}.step"] = torch.tensor(float(s["step"]), dtype=torch.float32)
        lr = group["lr"]
        args.setdefault("optimizer", opt_name)
        args.setdefault("lr", float(lr.item() if torch.is_tensor(lr) else lr))
        args.setdefault("weight-decay", float(group["weight_decay"]))
    ckpt = {
        "format": FORMAT,
        "config": config,
        "step": int(step),
        "seed": int(seed),
        "model": state,
        "optimizer_name": opt_name,
        "optimizer": opt_state,
        "train_args": "".join(f"{k}={v}\n" for k, v in args.items()),
    }
    _atomic_save(ckpt, os.fspath(path))


# ------------------------------------------------------------------ models


def build_model(config: str, kind: str = "arwrap") -> nn.Module:
    """A freshly initialised ``TransformerWrapper`` of this configuration:
    ``kind="arwrap"`` (``arwrap_cpp``) or ``"x_transformers"``."""
    wrapper, decoder = parse_config(config)
    if kind == "arwrap":
        return TransformerWrapper(attn_layers=Decoder(**decoder), **wrapper)
    if kind in ("x_transformers", "x-transformers"):
        import x_transformers

        decoder = {k: v for k, v in decoder.items() if k not in NATIVE_ONLY_DECODER_OPTIONS}
        return x_transformers.TransformerWrapper(attn_layers=x_transformers.Decoder(**decoder), **wrapper)
    raise ValueError(f"kind must be 'arwrap' or 'x_transformers', got {kind!r}")


def load_model(path: PathLike, kind: str = "arwrap") -> nn.Module:
    """The checkpoint's net with its weights, in eval mode: an ``arwrap_cpp.TransformerWrapper``
    (``kind="arwrap"``) or an ``x_transformers.TransformerWrapper`` (``kind="x_transformers"``)."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["config"], kind)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{os.fspath(path)}: the weights do not match the checkpoint's config: "
                         f"{str(e).splitlines()[0]}") from None
    return model.eval()


# ------------------------------------------------------------------ the trainer's data


def read_corpus(path: PathLike, suffix: Optional[str] = None, max_bytes: int = 8_000_000) -> bytes:
    """The bytes ``arwrap-train --data PATH [--ext SUFFIX] [--max-bytes N]`` trains on, read by
    the trainer's own C++ reader (``arwrap::read_corpus``).

    A file as is; a directory recursively in sorted path order, skipping hidden entries,
    ``__pycache__``, ``site-packages`` and ``dist-packages``, reading the files ending in
    ``suffix``, or with no suffix every file without a NUL byte in its first 8 KiB;
    cut at ``max_bytes`` (0: no limit). The default corpus is the standard library with
    ``suffix=".py"``. A missing path or no data raises ``RuntimeError`` with the reason.
    """
    return _C.read_corpus(os.fspath(path), suffix or "", int(max_bytes))


def split_corpus(data: bytes) -> tuple[bytes, bytes]:
    """(train, validation): the first 90% of the bytes (rounded down) and the rest."""
    n = len(data) * 9 // 10
    return data[:n], data[n:]


def validation_windows(val: bytes, seq_len: int, windows: int = 32) -> torch.Tensor:
    """The first ``windows`` non-overlapping ``seq_len + 1``-byte windows of the validation
    split (fewer if it is shorter), as int64 ``(count, seq_len + 1)``."""
    count = min(windows, len(val) // (seq_len + 1))
    if count < 1:
        raise ValueError(f"the validation split ({len(val)} bytes) is shorter than one window of {seq_len + 1}")
    buf = torch.frombuffer(bytearray(val[: count * (seq_len + 1)]), dtype=torch.uint8)
    return buf.long().view(count, seq_len + 1)


@torch.no_grad()
def validation_loss(wrapper: nn.Module, val: bytes, seq_len: int, windows: int = 32, batch: int = 16) -> float:
    """The number ``arwrap-train`` prints as ``val_loss``: ``wrapper`` (an
    ``AutoregressiveWrapper``) in eval mode over :func:`validation_windows`, in batches of
    ``batch`` windows, each batch's mean weighted by its size."""
    x = validation_windows(val, seq_len, windows)
    was_training = wrapper.training
    wrapper.eval()
    try:
        total = 0.0
        for i in range(0, x.shape[0], batch):
            b = x[i:i + batch]
            total += float(wrapper(b)) * b.shape[0]
        return total / x.shape[0]
    finally:
        wrapper.train(was_training)


__all__ = [
    "FORMAT",
    "load_checkpoint",
    "save_checkpoint",
    "parse_config",
    "build_model",
    "load_model",
    "read_corpus",
    "split_corpus",
    "validation_windows",
    "validation_loss",
]
