"""arwrap-train --tokenizer: the C++ reader of a `tokenizers` byte-level BPE JSON (examples/train/
tokenizer.h) gives the library's ids and text (checked through the --encode / --decode tool modes),
a token model's samples print as text, --sample takes a text prompt, and a tokenizer it cannot read
or that does not fit the model is refused in one line naming the file."""
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from arwrap_cpp import data as tokdata

tokenizers = pytest.importorskip("tokenizers")
pytestmark = pytest.mark.slow

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODEL = ["--seq-len", "32", "--dim", "32", "--depth", "1", "--heads", "2", "--dim-head", "16"]
TRAIN = ["--batch", "4", "--lr", "1e-2", "--warmup", "2", "--val-windows", "4", "--threads", "1", "--log-every", "5",
         "--precision", "fp32", "--val-every", "0"]


def run(trainer, *args, check=True):
    # bytes, not text: a decoded sample may hold a cut UTF-8 character, and the tests compare bytes
    proc = subprocess.run([str(trainer), *(a if isinstance(a, bytes) else str(a) for a in args)], capture_output=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def error(proc):
    """The one line a refused run prints (nothing trained)."""
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arwrap-train: error: "), stderr
    assert b"step " not in proc.stdout  # refused before training
    return lines[0]


def encode(trainer, tok, text):
    out = run(trainer, "--tokenizer", tok, "--encode", text.encode() if isinstance(text, str) else text).stdout
    return [int(i) for i in out.split()]


def decode(trainer, tok, ids):
    out = run(trainer, "--tokenizer", tok, "--decode", " ".join(map(str, ids))).stdout
    assert out.endswith(b"\n")
    return out[:-1]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """prepare's corpus and tokenizer.json (vocabulary 512) on a few standard-library modules."""
    out = tmp_path_factory.mktemp("bpe")
    prep = subprocess.run([sys.executable, "-m", "arwrap_cpp.data", "prepare", str(STDLIB / "json"),
                           str(STDLIB / "textwrap.py"), "--vocab", "512", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr
    tok = out / "tokenizer.json"
    assert f"arwrap-train --data {out} --num-tokens 512 --tokenizer {tok}" in prep.stdout, prep.stdout
    # this tokenizers writes merges as pairs; the reader also takes the older "a b" strings
    assert all(isinstance(m, list) for m in json.loads(tok.read_text())["model"]["merges"])
    return out


@pytest.fixture(scope="module")
def added(bpe):
    """The same tokenizer with added tokens (ids 512 and 513), as GPT-2's has <|endoftext|>."""
    tok = tokenizers.Tokenizer.from_file(str(bpe / "tokenizer.json"))
    tok.add_special_tokens(["<|endoftext|>"])
    tok.add_tokens(["<pad>"])
    path = bpe.parent / (bpe.name + "-added.json")
    tok.save(str(path))
    return path


def test_decode_matches_tokenizers_on_random_ids(trainer, added):
    tok = tokenizers.Tokenizer.from_file(str(added))
    n = tok.get_vocab_size()
    assert n == 514
    rng = random.Random(0)
    for length in (1, 7, 60, 400):
        ids = [rng.randrange(n) for _ in range(length)] + [512, 513]
        rng.shuffle(ids)
        # bytes that may cut a character: tokenizers shows each invalid sequence as U+FFFD
        assert decode(trainer, added, ids).decode("utf-8", "replace") == tok.decode(ids, skip_special_tokens=False)
    # the older merges format ("a b" strings) reads the same
    old = added.with_name("old-merges.json")
    d = json.loads(added.read_text())
    d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]
    old.write_text(json.dumps(d))
    ids = [rng.randrange(n) for _ in range(100)]
    assert decode(trainer, old, ids) == decode(trainer, added, ids)
    assert encode(trainer, old, "def f(x):\n    return x") == tok.encode("def f(x):\n    return x").ids


ASCII = [
    (STDLIB / "textwrap.py").read_text()[:40_000],  # Python source, as the corpus is
    (STDLIB / "json" / "decoder.py").read_text()[:20_000],
    "I'm sure they'll say we've done it; she'd go. It's 'quoted', DON'T shout, isn't it? 's 't 'LL",
    "a  b   c\n\n\n  d\t\t x \n \n\r\n   ",
    "   leading and trailing   ",
    "x = 12345 + 3.14e-10 * 0xFF - 1_000_000 // 7; y=[1,2,3]",
    "Hello, world!!! ??? ... --- ((())) {}[] <> @#$%^&*~`|\\ \"quoted\"",
    "one<|endoftext|>two <|endoftext|> three<pad><pad> four",  # the added tokens split the text first
]


@pytest.mark.parametrize("case", range(len(ASCII)))
def test_encode_matches_tokenizers_on_ascii(trainer, added, case):
    tok = tokenizers.Tokenizer.from_file(str(added))
    assert encode(trainer, added, ASCII[case]) == tok.encode(ASCII[case]).ids


NON_ASCII = [
    "café naïve Ünïcödé façade — “quotes” and ‘apostrophes’… 100€ ½ ² ×÷ ¿qué? ¡sí!",
    "Привет, мир! Γειά σου Κόσμε; Ελληνικά. Ջերմ բարև։ שלום עולם. مرحبا بالعالم ١٢٣ ۴۵۶",
    "नमस्ते दुनिया ०१२ สวัสดีชาวโลก ๑๒๓",
    "日本語のテキスト、です。中文文本，测试！한국어 텍스트 ＡＢＣ１２３！",
    "emoji 🎉🎉 a🎉b 👍🏽 👨‍👩‍👧 🇫🇷 ✓ → ∑ ≤ ∞ ★ ♥ ☃ ① ⅻ",
    "tabs\tand\u00a0nbsp\u2003em\u3000ideographic\u2028line\u0085next space",
]


def sweep(ranges):
    """Every assigned code point of `ranges` beside a letter, a digit, a space and punctuation."""
    cps = [c for a, b in ranges for c in range(a, b) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    each = [f"{chr(c)}a{chr(c)}1 {chr(c)}!{chr(c)}  " for c in cps]
    return ["".join(each[k:k + 2000]) for k in range(0, len(each), 2000)]


def test_encode_matches_tokenizers_where_the_character_classes_are_exact(trainer, bpe):
    """tokenizer.h lists where its \\p{L} / \\p{N} table is exact; there the ids are tokenizers'."""
    path = bpe / "tokenizer.json"
    tok = tokenizers.Tokenizer.from_file(str(path))
    for text in NON_ASCII:
        assert encode(trainer, path, text) == tok.encode(text).ids, text
    exact = [(0x80, 0x700), (0x900, 0x980), (0xE00, 0xE80), (0x2000, 0x2C00), (0x3000, 0x3400), (0x4E00, 0x4E80),
             (0xAC00, 0xAC80), (0xFE00, 0x10000), (0x1F000, 0x1FC00)]
    for text in sweep(exact):
        assert encode(trainer, path, text) == tok.encode(text).ids, text[:40]


def test_decode_of_encode_is_the_bytes_for_any_text(trainer, bpe):
    """Exact round trips, also where the pre-tokenization only approximates tokenizers' (other
    scripts' combining marks) and for bytes that are not UTF-8 at all."""
    path = bpe / "tokenizer.json"
    rng = random.Random(1)
    texts = ["\n".join(NON_ASCII).encode(),
        "ཀུན་ལ་བཀྲ་ཤིས། ሰላም ዓለም ᠮᠣᠩᠭᠣᠯ e\u0301 a\u0308\u0323 \U0001D11E \U000E0041 \uE000 \U0010FFFD".encode(),
        b"cut \xe2\x82 and \xf0\x9f\x8e twice, lone \x80\xbf, overlong \xc0\xaf, surrogate \xed\xa0\x80, "
        b"above \xf4\x90\x80\x80, \xff\xfe end \xe2",
    ]
    texts += [bytes(rng.randrange(1, 256) for _ in range(n)) for n in (1, 2, 3, 500)]  # argv: no NUL
    for raw in texts:
        ids = encode(trainer, path, raw)
        assert ids and all(0 <= i < 512 for i in ids)
        assert decode(trainer, path, ids) == raw, raw


@pytest.fixture(scope="module")
def trained(trainer, bpe):
    """12 steps on the prepared corpus with --tokenizer, a sample at steps 6 and 12."""
    path = bpe.parent / (bpe.name + "-model.pt")
    out = run(trainer, "--data", bpe, "--num-tokens", 512, "--tokenizer", bpe / "tokenizer.json", *MODEL, *TRAIN,
              "--steps", 12, "--sample-every", 6, "--sample-len", 24, "--checkpoint", path).stdout.decode()
    return path, out


SAMPLE = re.compile(r'^sample at step (\d+), prompt "(.*)":\n((?:  \| .*\n?)+)', re.M)


def test_training_samples_print_as_text(trained, bpe):
    path, out = trained
    tok_path = bpe / "tokenizer.json"
    assert f"tokenizer: {tok_path} (byte-level BPE, 512 ids, " in out
    samples = SAMPLE.findall(out)
    assert [int(s) for s, _, _ in samples] == [6, 12], out
    val = tokdata.decode(tok_path, tokdata.read_tokens(bpe / "corpus_val_000000.bin"))
    for _, prompt, body in samples:
        # the prompt is 32 ids of the validation shard, shown as text (printable: \n and " escaped)
        text = prompt.replace('\\"', '"').replace("\\n", "\n")
        assert len(text) >= 32 and text.strip("\ufffd") in val, prompt
        assert "prompt ids" not in out and not re.fullmatch(r"[\d\s|]+", body)
    # the hints say --tokenizer again: the checkpoint does not keep it
    abs_tok = os.path.normpath(os.path.abspath(tok_path))
    assert re.search(rf"^sample: .* --tokenizer {re.escape(abs_tok)} --sample 'def main\(\):'", out, re.M), out
    assert re.search(rf"^continue: .* --resume --steps 24 --tokenizer {re.escape(abs_tok)}", out, re.M), out


def test_sample_takes_a_text_prompt(trainer, trained, bpe):
    path, _ = trained
    tok = bpe / "tokenizer.json"
    out = run(trainer, "--checkpoint", path, "--tokenizer", tok, "--sample", "def f(", "--sample-len", 12).stdout
    assert out.startswith(b"def f(") and len(out) > len(b"def f(\n"), out
    # the same generation as the ids of the prompt without --tokenizer: ids in, ids out, as before
    ids = encode(trainer, tok, "def f(")
    plain = run(trainer, "--checkpoint", path, "--sample", " ".join(map(str, ids)), "--sample-len", 12).stdout.split()
    assert [int(i) for i in plain[:len(ids)]] == ids and len(plain) == len(ids) + 12
    assert decode(trainer, tok, [int(i) for i in plain]) + b"\n" == out


def test_without_tokenizer_samples_stay_ids(trainer, bpe, tmp_path):
    out = run(trainer, "--data", bpe, "--num-tokens", 512, *MODEL, *TRAIN, "--steps", 2, "--sample-every", 2,
              "--sample-len", 5, "--checkpoint", tmp_path / "ids.pt").stdout.decode()
    assert re.search(r"^sample at step 2, prompt ids [\d ]+:\n  \| \d+ \d+ \d+ \d+ \d+$", out, re.M), out
    assert "tokenizer:" not in out and "--tokenizer" not in out and "--sample '0 1 2'" in out


def test_bad_tokenizers_are_refused_in_one_line(trainer, bpe, added, trained, tmp_path):
    data = ["--data", bpe, "--num-tokens", 512, *MODEL, *TRAIN, "--steps", 2, "--checkpoint", tmp_path / "x.pt"]

    def refused(tok, *args):
        msg = error(run(trainer, *data, "--tokenizer", tok, *args, check=False))
        assert str(tok) in msg, msg
        return msg

    assert "does not exist" in refused(tmp_path / "missing.json")
    (tmp_path / "notjson.json").write_text('{"model": {"type": "BPE",, }}')
    assert refused(tmp_path / "notjson.json").endswith("is not JSON: expected a string key at byte 25")
    (tmp_path / "cut.json").write_bytes((bpe / "tokenizer.json").read_bytes()[:1000])
    msg = refused(tmp_path / "cut.json")
    assert re.search(r"is not JSON: .* at byte 1000, the end of the file \(cut short\?\)$", msg)
    for kind in ("WordPiece", "Unigram"):
        (tmp_path / f"{kind}.json").write_text(json.dumps({"version": "1.0", "model": {"type": kind, "vocab": {}}}))
        assert f'model.type is "{kind}"; arwrap-train reads byte-level BPE' in refused(tmp_path / f"{kind}.json")
    d = json.loads((bpe / "tokenizer.json").read_text())
    d["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "ws.json").write_text(json.dumps(d))
    assert "pre_tokenizer is Whitespace; arwrap-train reads ByteLevel" in refused(tmp_path / "ws.json")
    d = json.loads((bpe / "tokenizer.json").read_text())
    d["model"]["vocab"]["Ġzz"] = -3
    (tmp_path / "id.json").write_text(json.dumps(d))
    assert 'model.vocab["Ġzz"] is not an id' in refused(tmp_path / "id.json")
    d = json.loads((bpe / "tokenizer.json").read_text())
    d["model"]["merges"].append(["Ġ", "zzz"])
    (tmp_path / "merge.json").write_text(json.dumps(d))
    assert '"zzz" is not in model.vocab' in refused(tmp_path / "merge.json")
    # bigger than the model: the flags' vocabulary, and a checkpoint's
    msg = error(run(trainer, *data, "--num-tokens", 300, "--tokenizer", bpe / "tokenizer.json", check=False))
    assert f"--tokenizer {bpe / 'tokenizer.json'} has 512 ids, more than --num-tokens 300" in msg
    msg = error(run(trainer, "--data", bpe, *MODEL, "--tokenizer", bpe / "tokenizer.json", check=False))
    assert "more than --num-tokens 256 (the default; give --num-tokens 512)" in msg
    path, _ = trained
    msg = error(run(trainer, "--checkpoint", path, "--tokenizer", added, "--sample", "x", check=False))
    assert f"--tokenizer {added} has 514 ids, more than checkpoint {path}'s num_tokens 512" in msg
    # a text corpus is bytes: a tokenizer has no place there
    text = tmp_path / "text.txt"
    text.write_text("plain text\n" * 400)
    msg = error(run(trainer, "--data", text, *MODEL, "--tokenizer", bpe / "tokenizer.json", check=False))
    assert f"--data {text} is text, which the model reads as bytes: leave --tokenizer out" in msg
    # the tool modes need a tokenizer, and an id it has
    assert "--encode needs --tokenizer PATH" in error(run(trainer, "--encode", "x", check=False))
    msg = error(run(trainer, "--tokenizer", bpe / "tokenizer.json", "--decode", "5 512", check=False))
    assert f"tokenizer {bpe / 'tokenizer.json'} has no token 512 (its ids are 0..511)" in msg
