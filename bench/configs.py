"""The benchmarks' model configurations, one table (the A/B/C of every results table).

name: (num_tokens, dim, depth, batch, seq_len + 1); heads 8, attn_dim_head 64, absolute
positions (no rotary) unless a benchmark says otherwise.
"""
CONFIGS = {
    "A": (256, 512, 6, 4, 1025),
    "B": (256, 256, 4, 8, 513),
    "C": (32000, 512, 2, 4, 513),
}
HEADS = 8
DIM_HEAD = 64
# "T": arwrap-train's default model and batch (examples/train/flags.cpp), 4 heads, rotary
TRAINER = (256, 256, 4, 16, 257)
TRAINER_HEADS = 4
# the trainer's model at a BPE vocabulary (arwrap-train --num-tokens on token shards): the step
# bench's T4096 / T32000 and bench_step --trainer-vocabs
TRAINER_VOCABS = (4096, 32000)
# a smoke-test size for a benchmark's own test (not a results row)
TINY = (64, 64, 2, 2, 65)
