"""No leak: 2,000 training steps of a small model through arwrap_cpp.AutoregressiveWrapper keep
the resident memory flat after warm-up.

The loop runs in a fresh process (so nothing else in the test session moves its memory) and
goes through every path a long run takes: the plain step (gradient written over the logits),
the key mask, the fused head, return_outputs (logits and cache handed back to Python),
lens, and every 10th step a bad batch that raises (the error path must free what it holds).
Resident memory (/proc/self/statm) is sampled after each step; after 200 warm-up steps it
must grow by less than 8 MiB over the remaining 1,800.
"""
import json
import subprocess
import sys
import textwrap


STEPS, WARMUP, BOUND_MIB = 2000, 200, 8.0

LOOP = textwrap.dedent(f"""
    import gc, json, os, warnings
    import torch
    from x_transformers import Decoder, TransformerWrapper
    from arwrap_cpp import AutoregressiveWrapper

    torch.set_num_threads(1)
    PAGE = os.sysconf("SC_PAGE_SIZE")

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20

    torch.manual_seed(0)
    net = TransformerWrapper(num_tokens=64, max_seq_len=32, attn_layers=Decoder(dim=32, depth=1, heads=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrappers = [AutoregressiveWrapper(net), AutoregressiveWrapper(net, mask_prob=0.15),
                    AutoregressiveWrapper(net, fused_head=True)]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    samples, errors = [], 0
    for step in range({STEPS}):
        x = torch.randint(0, 64, (4, 33), generator=gen)
        lens = torch.randint(0, 34, (4,), generator=gen)
        if step % 10 == 9:  # a bad batch: token id out of the vocabulary
            x[1, 2] = 64
            try:
                wrappers[step % 3](x)
            except IndexError:
                errors += 1
            samples.append(rss_mib())
            continue
        if step % 4 == 3:
            loss, (logits, cache) = wrappers[0](x, return_outputs=True, lens=lens)
        else:
            loss = wrappers[step % 3](x, lens=lens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        samples.append(rss_mib())
    print(json.dumps(dict(samples=samples, errors=errors, loss=loss.item())))
""")


def test_resident_memory_is_flat_over_2000_steps():
    res = subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-5000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    samples = out["samples"]
    assert len(samples) == STEPS and out["errors"] == STEPS // 10
    # the warm-up level: the highest resident size in the warm-up steps (allocator pools, caches)
    base = max(samples[WARMUP - 50:WARMUP])
    growth = max(samples[WARMUP:]) - base
    tail = samples[-1] - samples[WARMUP]
    print(f"resident memory: {base:.1f} MiB after warm-up, at most {growth:+.1f} MiB over the remaining steps")
    assert growth < BOUND_MIB, (f"resident memory grew by {growth:.1f} MiB after warm-up "
                                f"({samples[WARMUP]:.1f} -> {samples[-1]:.1f} MiB; per 1000 steps "
                                f"{1000 * tail / (STEPS - WARMUP):.2f} MiB)")
