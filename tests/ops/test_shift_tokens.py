"""shift_tokens against x-transformers' own AutoregressiveWrapper.forward."""
import pytest
import torch
import torch.nn.functional as F
from x_transformers import AutoregressiveWrapper
from x_transformers.autoregressive_wrapper import lens_to_mask

import arwrap_cpp
from arwrap_cpp import shift_tokens


class RecordingNet(torch.nn.Module):
    """Stands in for TransformerWrapper: records what x-transformers' wrapper feeds it."""

    output_is_log_prob = False
    looped = False
    add_continuous_pred_head = False
    can_cache_kv = False

    def __init__(self, num_tokens=17):
        super().__init__()
        self.max_seq_len = 10_000
        self.num_tokens = num_tokens
        self.pad_value = 0
        self.seen = {}
        self.logits = None

    def forward(self, x, return_intermediates=False, **kwargs):
        self.seen = dict(x=x.clone(), **kwargs)
        b, n = x.shape
        self.logits = torch.randn(b, n, self.num_tokens)
        return self.logits, None


def run_x_transformers(x, lens=None, **wrapper_kw):
    net = RecordingNet()
    wrapper = AutoregressiveWrapper(net, **wrapper_kw)
    loss = wrapper(x, lens=lens)
    return net, loss


@pytest.mark.parametrize("b,n1", [(1, 2), (3, 17), (5, 64)])
@pytest.mark.parametrize("with_lens", [False, True])
@pytest.mark.parametrize("ignore_index,pad_value", [(-100, 0), (0, 3), (-1, 5)])
def test_matches_x_transformers_shift(b, n1, with_lens, ignore_index, pad_value):
    x = torch.randint(1, 17, (b, n1))
    x[0, n1 // 2] = ignore_index  # ignore_index inside the data
    lens = torch.randint(1, n1 + 1, (b,)) if with_lens else None
    net, xt_loss = run_x_transformers(x, lens, ignore_index=ignore_index, pad_value=pad_value)
    inp, target, mask = shift_tokens(x, lens=lens, ignore_index=ignore_index, pad_value=pad_value)
    assert mask is None
    # x-transformers 2.31 feeds all n + 1 tokens; ours drops the last (it predicts nothing)
    assert torch.equal(inp, net.seen["x"][:, :-1])
    # target: x-transformers' rule, and the loss it computes from it
    xm = x.masked_fill(~lens_to_mask(lens, n1), ignore_index) if with_lens else x
    assert torch.equal(target, xm[:, 1:])
    ours = F.cross_entropy(net.logits[:, :-1].transpose(1, 2), target, ignore_index=ignore_index)
    torch.testing.assert_close(ours, xt_loss, equal_nan=True)


@pytest.mark.parametrize("n1,mask_prob", [(9, 0.15), (33, 0.5), (5, 0.99), (65, 0.1)])
def test_mask_matches_x_transformers_given_the_same_draw(n1, mask_prob):
    """x-transformers draws torch.randn(inp.shape) and masks the top-k; fed our n input
    tokens, with the same seed, it must choose the very same positions."""
    x = torch.randint(0, 17, (4, n1))
    torch.manual_seed(123)
    net, _ = run_x_transformers(x[:, :-1], mask_prob=mask_prob)
    xt_mask = net.seen["self_attn_kv_mask"]
    torch.manual_seed(123)
    inp, target, mask = shift_tokens(x, mask_prob=mask_prob)
    assert torch.equal(mask, xt_mask)
    # and with an explicit generator
    g = torch.Generator().manual_seed(123)
    _, _, mask2 = shift_tokens(x, mask_prob=mask_prob, generator=g)
    assert torch.equal(mask2, xt_mask)


@pytest.mark.parametrize("n,mask_prob", [(2, 0.5), (10, 0.15), (100, 0.3), (7, 0.999)])
def test_mask_statistics(n, mask_prob):
    b = 400
    x = torch.randint(0, 50, (b, n + 1))
    inp, target, mask = shift_tokens(x, mask_prob=mask_prob)
    k = min(int(n * mask_prob), n - 1)
    assert mask.dtype == torch.bool and mask.shape == (b, n)
    assert torch.all((~mask).sum(-1) == k)  # exactly k masked per row
    assert torch.all(mask[:, 0])  # the first position is never masked
    if k > 0 and n > 2:
        freq = (~mask[:, 1:]).float().mean(0)  # uniform over positions 1..n-1
        expected = k / (n - 1)
        assert torch.all((freq - expected).abs() < 5 * (expected * (1 - expected) / b) ** 0.5 + 1e-6)


def test_mask_is_reproducible_from_a_seed_and_injectable():
    x = torch.randint(0, 50, (3, 21))
    a = shift_tokens(x, mask_prob=0.3, generator=torch.Generator().manual_seed(7))[2]
    b = shift_tokens(x, mask_prob=0.3, generator=torch.Generator().manual_seed(7))[2]
    assert torch.equal(a, b)
    noise = torch.randn(3, 20)
    c = shift_tokens(x, mask_prob=0.3, noise=noise)[2]
    expected = torch.ones(3, 20, dtype=torch.bool)
    noise[:, 0] = -float("inf")
    expected.scatter_(1, noise.topk(6, dim=-1).indices, False)
    assert torch.equal(c, expected)


def test_mask_token_replacement_variant():
    x = torch.randint(0, 50, (4, 31))
    inp, target, mask = shift_tokens(x, mask_prob=0.25, mask_token_id=99)
    plain, target2, _ = shift_tokens(x)
    assert torch.equal(target, target2)
    assert torch.all(inp[~mask] == 99)
    assert torch.equal(inp[mask], plain[mask])


def test_lens_zero_and_full():
    x = torch.randint(0, 9, (2, 6))
    inp, target, _ = shift_tokens(x, lens=torch.tensor([0, 6]))
    assert torch.all(target[0] == -100) and torch.all(inp[0] == 0)
    assert torch.equal(target[1], x[1, 1:]) and torch.equal(inp[1], x[1, :-1])


def test_operator_machinery(tmp_path):
    x = torch.randint(0, 9, (3, 8))
    lens = torch.tensor([8, 3, 5])
    noise = torch.randn(3, 7)
    torch.library.opcheck(torch.ops.arwrap.shift_tokens.default, (x, lens, noise, -100, 0, 0.3, 42))
    torch.library.opcheck(torch.ops.arwrap.shift_tokens.default, (x, None, None, -100, 0, 0.0, None))

    def f(x, lens, noise):
        inp, tgt, mask = torch.ops.arwrap.shift_tokens(x, lens, noise, -100, 0, 0.3, None)
        return inp + tgt, mask

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(x, lens, noise), f(x, lens, noise)):
        assert torch.equal(a, b)


def test_bad_input_names_the_argument():
    x = torch.randint(0, 9, (3, 8))
    with pytest.raises(ValueError, match="x must be 2-D"):
        shift_tokens(torch.randint(0, 9, (8,)))
    with pytest.raises(ValueError, match="x must be int64"):
        shift_tokens(x.float())
    with pytest.raises(ValueError, match="seq_len \\+ 1 >= 2"):
        shift_tokens(torch.randint(0, 9, (3, 1)))
    with pytest.raises(ValueError, match="lens must be in"):
        shift_tokens(x, lens=torch.tensor([1, 9, 2]))
    with pytest.raises(ValueError, match="lens must be in"):
        shift_tokens(x, lens=torch.tensor([1, -1, 2]))
    with pytest.raises(ValueError, match="lens must have shape"):
        shift_tokens(x, lens=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="lens must be int64 or int32"):
        shift_tokens(x, lens=torch.tensor([1.0, 2.0, 3.0]))
    for p in [-0.1, 1.0, float("nan")]:
        with pytest.raises(ValueError, match="mask_prob must be in"):
            shift_tokens(x, mask_prob=p)
    with pytest.raises(ValueError, match="noise must have shape"):
        shift_tokens(x, mask_prob=0.2, noise=torch.randn(3, 8))
    with pytest.raises(ValueError, match="mask_token_id"):
        shift_tokens(x, mask_prob=0.2, mask_token_id=-5)
    bad = x.clone()
    bad[1, 2] = -7
    with pytest.raises(IndexError, match=r"x must hold token ids >= 0.*x\[1, 2\]"):
        shift_tokens(bad)
    # a negative id past lens is padding, not an error
    shift_tokens(bad, lens=torch.tensor([8, 2, 8]))


# ---------------------------------------------------------------- on a GPU (from the former tests/test_cuda.py)



@pytest.mark.cuda
@pytest.mark.parametrize("keep_last", [False, True])
@pytest.mark.parametrize("mask_token_id", [None, 7])
def test_shift_tokens_cuda_equals_cpu(keep_last, mask_token_id, monkeypatch):
    monkeypatch.setenv("ARWRAP_SYNC_CHECKS", "1")  # the host check's IndexError below
    x = torch.randint(0, 50, (6, 129))
    x[2, 10:20] = -100
    lens = torch.tensor([129, 3, 64, 1, 0, 100])
    noise = torch.randn(6, 129 if keep_last else 128)
    noise[1, 5] = noise[1, 6]  # a tie
    cpu = arwrap_cpp.shift_tokens(x, lens=lens, mask_prob=0.3, mask_token_id=mask_token_id, noise=noise,
                                  keep_last=keep_last)
    gpu = arwrap_cpp.shift_tokens(x.cuda(), lens=lens.cuda(), mask_prob=0.3, mask_token_id=mask_token_id,
                                  noise=noise.cuda(), keep_last=keep_last)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
    with pytest.raises(IndexError, match="token ids >= 0"):
        bad = x.clone()
        bad[0, 3] = -5
        arwrap_cpp.shift_tokens(bad.cuda())


@pytest.mark.cuda
def test_shift_tokens_cuda_opcheck():
    x = torch.randint(0, 9, (3, 8), device="cuda")
    torch.library.opcheck(torch.ops.arwrap.shift_tokens.default,
                          (x, None, torch.randn(3, 7, device="cuda"), -100, 0, 0.3, None, False))




