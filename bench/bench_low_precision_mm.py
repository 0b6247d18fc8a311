"""The weight-gradient product of the linear cross-entropy's tile loop, dW (float32) +=
Z^T H for a bf16 tile Z (R, V) and bf16 rows H (R, D), three ways, round-robin in one
process (median of the rounds):
  upcast      dW.addmm_(Z^T.float(), H.float())     (before issue 16's fix 1)
  out_dtype   torch.addmm(dW, Z^T, H, out_dtype=float32, out=dW)   (bf16 GEMM, float32
              result; CUDA in recent torch; torch 2.13's CPU has no kernel for it)
  bf16        dW += Z^T @ H, the product rounded to bf16 (what a plain bf16 GEMM gives)
    python bench/bench_low_precision_mm.py [--device cuda] [--V 32000 --R 256 --D 512]

--gemm: ATen's plain GEMM (M, K) @ (K, N) in bf16 and in float32 for the four operand
layouts (A or A^T, B or B^T), GFLOP/s, and whether arwrap_cpp sends bf16 products on this CPU
down the float32 route (csrc/ops/low_precision_mm.h says why):
    python bench/bench_low_precision_mm.py --gemm [--M 2048 --K 256 --N 2048]
"""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--R", type=int, default=256)
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gemm", action="store_true", help="ATen's bf16 GEMM against float32, four layouts")
    ap.add_argument("--M", type=int, default=2048)
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--N", type=int, default=2048)
    a = ap.parse_args()
    if a.gemm:
        return gemm(a)
    dev = torch.device(a.device)
    z = (torch.randn(a.R, a.V, device=dev) / 100).bfloat16()
    h = torch.randn(a.R, a.D, device=dev).bfloat16()
    dw = torch.zeros(a.V, a.D, device=dev)
    zt = z.t()

    def upcast():
        dw.addmm_(zt.float(), h.float())

    def out_dtype():
        torch.addmm(dw, zt, h, out_dtype=torch.float32, out=dw)

    def bf16():
        dw.add_(zt @ h)

    contenders = {"upcast": upcast, "out_dtype": out_dtype, "bf16": bf16}
    for name, f in list(contenders.items()):
        try:
            f()
        except (RuntimeError, NotImplementedError) as e:
            print(f"{name}: not available on {dev} ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
            del contenders[name]
    times = {n: [] for n in contenders}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(a.rounds):
        for n, f in contenders.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[n].append(time.perf_counter() - t)
    base = statistics.median(times["upcast"])
    print(f"{dev}, torch {torch.__version__}, R={a.R} V={a.V} D={a.D}, median of {a.rounds} rounds")
    for n, ts in times.items():
        m = statistics.median(ts)
        print(f"  {n:10s} {m * 1e3:9.2f} ms   upcast/this = {base / m:.2f}")


def gemm(a):
    import arwrap_cpp

    M, K, N = a.M, a.K, a.N
    print(f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, ({M}x{K}) @ ({K}x{N}), median of {a.rounds}; "
          f"arwrap_cpp.lowp_gemm_upcasts(bf16) = {arwrap_cpp.lowp_gemm_upcasts(torch.bfloat16)}")
    for dt in (torch.bfloat16, torch.float32):
        A, At = torch.randn(M, K, dtype=dt), torch.randn(K, M, dtype=dt).t()
        B, Bt = torch.randn(K, N, dtype=dt), torch.randn(N, K, dtype=dt).t()
        for name, x, y in (("A @ B", A, B), ("A^T @ B", At, B), ("A @ B^T", A, Bt), ("A^T @ B^T", At, Bt)):
            x @ y  # warm-up
            ts = []
            for _ in range(a.rounds):
                t = time.perf_counter()
                x @ y
                ts.append(time.perf_counter() - t)
            m = statistics.median(ts)
            print(f"  {str(dt).split('.')[-1]:9s} {name:10s} {m * 1e3:9.1f} ms  {2 * M * K * N / m / 1e9:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
