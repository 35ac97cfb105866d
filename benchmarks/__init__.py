"""Benchmarks of tbptt-sweeps: every figure a ratio against a baseline run beside it.

``python -m benchmarks.run [--smoke] [--out DIR]`` runs the suite (see ``benchmarks.run``) and
writes ``results.csv`` and ``results.md``; ``BENCHMARKS.md`` at the repository root holds the
latest full-mode figures. One module per benchmark, each with ``run(smoke) -> list[Row]``:

- ``throughput``: Trainer vs a hand-written fused-LSTM loop at k1 = k2, and the fraction of
  the matmul-rate limit R / (6 N_eff) both reach (benchmarks 1 and 2);
- ``overlap``: TBPTT with k1 < k2, ours vs hand recomputation vs the per-step forum version;
- ``memory``: peak memory against k2 and against stream length, one fresh process per case;
- ``orchestration``: per-trial overhead of our sweeper vs raw Optuna vs a process per trial;
- ``scaling``: trials per minute by workers x threads;
- ``search``: ASHA vs no pruning vs batch-synchronous scheduling on Shakespeare.

Shared parts: ``common`` (rows, repeats, interleaving), ``workloads`` (corpus, our Trainer,
GEMM rate), ``baselines`` (hand-written PyTorch loops), ``launch`` (child processes, trial
times), ``report`` (CSV, Markdown, machine description).
"""
