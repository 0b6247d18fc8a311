"""Token corpora for ``arwrap-train`` (docs/training.md, "Token corpora and BPE").

Reads and writes the token files the trainer memory-maps (examples/train/tokens.h):

* llm.c shards: a header of 256 int32 (``[0]`` magic 20240520 with ``[1]`` version 1 for uint16
  tokens, or magic 20240801 with version 7 for uint32; ``[2]`` the token count), then the tokens;
* nanoGPT's raw ``train.bin`` / ``val.bin``: the tokens alone (uint16, or uint32).

``python -m arwrap_cpp.data prepare TEXT... --vocab 4096 --out DIR`` trains a byte-level BPE with
the Hugging Face ``tokenizers`` library (``pip install arwrap_cpp[data]``) on the user's own text,
nothing downloaded, and writes ``DIR/tokenizer.json`` and llm.c shards ``DIR/corpus_train_000001.bin``
... and ``DIR/corpus_val_000000.bin``; ``python -m arwrap_cpp.data decode DIR/tokenizer.json IDS...``
turns ids back into text. The C++ trainer reads the same ``tokenizer.json`` itself
(``arwrap-train --tokenizer DIR/tokenizer.json``: samples as text, text prompts); without it, it
takes and prints token ids.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]
MAGIC_UINT16, VERSION_UINT16 = 20240520, 1
MAGIC_UINT32, VERSION_UINT32 = 20240801, 7
HEADER_INTS = 256


def write_shard(path: PathLike, tokens: Sequence[int] | np.ndarray) -> Path:
    """An llm.c shard of ``tokens``: uint16 when every id fits, else uint32."""
    toks = np.asarray(tokens)
    if toks.ndim != 1 or toks.size == 0:
        raise ValueError(f"write_shard: tokens must be a non-empty 1-D sequence, got shape {toks.shape}")
    if toks.min() < 0 or toks.max() >= 2**32:
        raise ValueError(f"write_shard: token ids must lie in [0, 2**32), got {toks.min()}..{toks.max()}")
    wide = toks.max() >= 2**16
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[0], header[1] = (MAGIC_UINT32, VERSION_UINT32) if wide else (MAGIC_UINT16, VERSION_UINT16)
    header[2] = toks.size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype(np.uint32 if wide else np.uint16).tobytes())
    return path


def read_tokens(path: PathLike, raw_dtype: str = "uint16") -> np.ndarray:
    """The tokens of one file, memory-mapped, as the trainer reads them (llm.c header or raw)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = np.frombuffer(f.read(12).ljust(12, b"\0"), dtype=np.int32)
    if head[0] in (MAGIC_UINT16, MAGIC_UINT32):
        dtype = np.uint16 if head[0] == MAGIC_UINT16 else np.uint32
        return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(int(head[2]),))
    return np.memmap(path, dtype=np.dtype(raw_dtype), mode="r")


def _texts(paths: Iterable[PathLike], suffix: str) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # as arwrap-train reads a directory: hidden entries, __pycache__, site-/dist-packages skipped
            skip = {"__pycache__", "site-packages", "dist-packages"}
            files += sorted(f for f in p.rglob(f"*{suffix}") if f.is_file() and not any(
                part.startswith(".") or part in skip for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"prepare: {p} does not exist")
    if not files:
        raise ValueError(f"prepare: no text files (*{suffix}) in {', '.join(map(str, paths))}")
    return files


def prepare(texts: Sequence[PathLike], vocab: int, out: PathLike, *, suffix: str = ".py", val_fraction: float = 0.1,
            shard_tokens: int = 10_000_000, max_bytes: int = 0) -> dict:
    """Trains a byte-level BPE of ``vocab`` ids on the files of ``texts`` (directories: their
    ``*suffix`` files, recursively, in sorted order), encodes them, and writes ``out/tokenizer.json``
    and llm.c shards: the last ``val_fraction`` of the files' tokens to ``corpus_val_000000.bin``,
    the rest to ``corpus_train_NNNNNN.bin`` of at most ``shard_tokens`` each. Returns a summary."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as e:  # an optional dependency
        raise ImportError("prepare needs the tokenizers library: pip install 'arwrap_cpp[data]' "
                          "(or pip install tokenizers)") from e
    if vocab < 257:
        raise ValueError(f"prepare: --vocab must be at least 257 (256 bytes + merges), got {vocab}")
    files = _texts(texts, suffix)
    docs, total = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if max_bytes and total + len(text) > max_bytes:
            break
        docs.append(text)
        total += len(text)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(docs)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    n_val = max(1, int(len(ids) * val_fraction))
    train, val = ids[:-n_val], ids[-n_val:]
    shards = [write_shard(out / "corpus_val_000000.bin", val)]
    for i, at in enumerate(range(0, len(train), shard_tokens)):
        shards.append(write_shard(out / f"corpus_train_{i + 1:06d}.bin", train[at:at + shard_tokens]))
    return {"files": len(docs), "bytes": total, "tokens": int(len(ids)), "vocab": tok.get_vocab_size(),
            "train_tokens": int(len(train)), "val_tokens": int(len(val)), "shards": [str(s) for s in shards],
            "tokenizer": str(out / "tokenizer.json")}


def decode(tokenizer: PathLike, ids: Sequence[int]) -> str:
    """The text of ``ids`` under a ``tokenizers`` JSON (e.g. an arwrap-train sample)."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(tokenizer)).decode(list(map(int, ids)))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m arwrap_cpp.data", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="train a byte-level BPE on TEXT and write llm.c shards and tokenizer.json")
    p.add_argument("text", nargs="+", help="text files or directories (their --suffix files, recursively)")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size (default 4096)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--suffix", default=".py", help="in directories, the files ending so (default .py)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="tokens for validation (default 0.1)")
    p.add_argument("--max-bytes", type=int, default=0, help="read at most N characters (0: all)")
    d = sub.add_parser("decode", help="print the text of token ids (e.g. an arwrap-train sample)")
    d.add_argument("tokenizer", help="a tokenizers JSON (prepare's tokenizer.json)")
    d.add_argument("ids", nargs="+", help="token ids, space or comma separated")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "prepare":
            s = prepare(args.text, args.vocab, args.out, suffix=args.suffix, val_fraction=args.val_fraction,
                        max_bytes=args.max_bytes)
            print(f"{s['files']} files, {s['bytes']} characters -> {s['tokens']} tokens "
                  f"({s['bytes'] / max(s['tokens'], 1):.2f} characters a token), vocabulary {s['vocab']}; "
                  f"{s['train_tokens']} train / {s['val_tokens']} validation tokens")
            print(f"wrote {s['tokenizer']} and {len(s['shards'])} shards; train with:")
            print(f"  arwrap-train --data {args.out} --num-tokens {s['vocab']} --tokenizer {s['tokenizer']}")
        else:
            ids = [int(x) for item in args.ids for x in item.replace(",", " ").split()]
            print(decode(args.tokenizer, ids))
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"arwrap_cpp.data: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
