"""Training-step throughput of the tiny config: today's step against the code before the
CGS-GAN-fidelity and speed work (commit d2c84f5), and against today's step with each CPU speed
lever applied, all measured in one run, interleaved: one worker process per version builds the
same tiny model (64x64, 128 points, 3 levels, batch 8, 4 views) on the same synthetic heads, and
the workers take turns, a few steps each, so that a change in the machine's load hits all alike.

    levers (applied by the worker to today's trainer, not in the trainer itself):
    channels_last   the discriminator's weights in channels-last memory format (its convolutions
                    are the largest share of the step)
    compile_d       torch.compile of the discriminator for the G and D phases; the lazy R1 phase
                    stays eager (torch.compile cannot take the double backward R1 needs)
    both            the two together

Also times N = 1, 2, 4 views of the current code, and splits the current step's time by kind of
operation (PyTorch profiler).

    python benchmarks/train_step.py [--rounds 12 --steps 3 --threads 2]

Writes benchmarks/results/train_step.md with the machine described.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402

BASELINE = "d2c84f5"  # the last commit before the issues "faithful core" and "show that the core learns"

# A worker: builds a trainer of the tiny config on the given data, then on each "run N" line runs
# N training steps and answers with their wall times. Works with the old and the new code (both
# have config.tiny(), Trainer(cfg, dir) and train_step()).
WORKER = textwrap.dedent(
    """
    import json, sys, time, torch
    torch.set_num_threads(int(sys.argv[3]))
    from cgsgan import config
    from cgsgan.training.trainer import Trainer
    cfg = config.tiny()
    cfg.data.source, cfg.data.path = "folder", sys.argv[1]
    cfg.loss.num_views = int(sys.argv[4])
    cfg.train.snapshot_metrics = []
    t = Trainer(cfg, sys.argv[2])
    lever = sys.argv[6] if len(sys.argv) > 6 else ""
    if lever in ("channels_last", "both"):
        t.D.to(memory_format=torch.channels_last)
    if lever in ("compile_d", "both"):
        eager, fast = t.D, torch.compile(t.D)

        class EagerForR1(torch.nn.Module):  # R1 (input and weights both need gradients) stays eager
            def __init__(self):
                super().__init__()
                self.inner = eager

            def forward(self, img, c, *args, **kwargs):
                r1 = img.requires_grad and next(eager.parameters()).requires_grad
                return (eager if r1 else fast)(img, c, *args, **kwargs)

        t.D = EagerForR1()
    for _ in range(int(sys.argv[5])):
        t.train_step()  # warm-up (and past the first, empty-looking steps; compiles)
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            t.train_step()
            times.append(time.perf_counter() - t0)
        print(json.dumps(times), flush=True)
    """
)


# Where the current step's time goes: torch.profiler over a few steps, self time per operator,
# summed into kinds (what each kind is in this model is said in the table).
PROFILE = textwrap.dedent(
    """
    import json, sys, torch
    from torch.profiler import profile, ProfilerActivity
    torch.set_num_threads(int(sys.argv[3]))
    from cgsgan import config
    from cgsgan.training.trainer import Trainer
    cfg = config.tiny()
    cfg.data.source, cfg.data.path = "folder", sys.argv[1]
    cfg.train.snapshot_metrics = []
    t = Trainer(cfg, sys.argv[2])
    for _ in range(20):
        t.train_step()
    steps = 16  # one lazy R1 step among them, as in training
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t.train_step()
    kinds = {}
    for e in prof.key_averages():
        n = e.key
        if "convolution" in n or n.startswith("aten::leaky_relu") or n.startswith("aten::constant_pad"):
            kind = "convolutions, leaky ReLU, padding (the discriminator)"
        elif n.startswith("Native"):
            kind = "compiled renderer (projection and compositing, forward and backward)"
        elif n in ("aten::mm", "aten::addmm", "aten::bmm") or "scaled_dot_product" in n:
            kind = "matrix products and attention (generator, mappings)"
        else:
            kind = "everything else (elementwise, copies, optimiser, autograd and Python overhead)"
        kinds[kind] = kinds.get(kind, 0.0) + e.self_cpu_time_total / 1e6 / steps
    print(json.dumps(kinds))
    """
)


LEVERS = ("channels_last", "compile_d", "both")


class Worker:
    def __init__(self, code: Path, data: Path, run_dir: Path, threads: int, views: int, warmup: int,
                 lever: str = "") -> None:
        env = {"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(threads),
               "TORCHINDUCTOR_CACHE_DIR": str(run_dir / "inductor")}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(data), str(run_dir), str(threads), str(views),
                                      str(warmup), lever], cwd=code, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"worker for {code} failed to start: {line!r}")

    def run(self, steps: int) -> list[float]:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args()
    from cgsgan.data.synthetic import generate_synthetic

    load_before = open("/proc/loadavg").read().split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), BASELINE], check=True,
                       capture_output=True)
        try:
            data = generate_synthetic(tmp / "data", 64, 4, 64, 0)
            workers = {"before": Worker(old, data, tmp / "run-old", args.threads, 4, args.warmup),
                       "now": Worker(ROOT, data, tmp / "run-new", args.threads, 4, args.warmup)}
            workers |= {lever: Worker(ROOT, data, tmp / f"run-{lever}", args.threads, 4, args.warmup, lever)
                        for lever in LEVERS}
            times = {name: [] for name in workers}
            order = list(workers)
            for r in range(args.rounds):
                for name in order if r % 2 == 0 else order[::-1]:
                    times[name] += workers[name].run(args.steps)
            for w in workers.values():
                w.close()
            views = {}
            for v in (1, 2, 4):
                w = Worker(ROOT, data, tmp / f"run-v{v}", args.threads, v, args.warmup)
                views[v] = median(w.run(args.steps * 2))
                w.close()
            env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(args.threads)}
            split = json.loads(subprocess.run([sys.executable, "-c", PROFILE, str(data), str(tmp / "run-prof"),
                                               str(args.threads)], cwd=ROOT, env=env, capture_output=True, text=True,
                                              check=True).stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    before, now = median(times["before"]), median(times["now"])
    batch = 8
    lines = [
        "# Training step, tiny config (64x64, 2,688 Gaussians, batch 8, 4 views)",
        "",
        describe(),
        f"Load average before the run: {load_before} (2 cores; other jobs may share them).",
        "",
        f"Interleaved: {args.rounds} rounds of {args.steps} steps per code version, each after {args.warmup} warm-up "
        f"steps, {args.threads} torch threads; medians over all timed steps.",
        "",
        "| code | s / step | images / s |",
        "|---|---|---|",
        f"| before ({BASELINE}) | {before:.3f} | {batch / before:.1f} |",
        f"| now | {now:.3f} | {batch / now:.1f} |",
        "",
        f"**Speed-up: {before / now:.2f}x** in images per second.",
        "",
        "## Today's step with each CPU speed lever (same run, interleaved)",
        "",
        "| lever | s / step | step time against today's |",
        "|---|---|---|",
        f"| none (today) | {now:.3f} | 1.00 |",
    ]
    lines += [f"| {lever} | {median(times[lever]):.3f} | {median(times[lever]) / now:.2f} |" for lever in LEVERS]
    lines += [
        "",
        "channels_last puts the discriminator's weights in channels-last format; compile_d runs it through "
        "torch.compile for the G and D phases (R1 stays eager: torch.compile cannot take its double backward); "
        "both together. Fewer host-device syncs are not measured: on a CPU there is no device queue to wait "
        "for, and the step's logged losses stay tensors until a tick ends.",
        "",
        "Every timed step of each version (seconds):",
        "",
    ]
    lines += [f"- {name}: {', '.join(f'{t:.3f}' for t in ts)}" for name, ts in times.items()]
    lines += [
        "",
        "## Views per generated head (current code)",
        "",
        "| views N | s / step | ratio to N=1 |",
        "|---|---|---|",
    ]
    lines += [f"| {v} | {s:.3f} | {s / views[1]:.2f} |" for v, s in views.items()]
    total = sum(split.values())
    lines += ["", "## Where the current step's time goes", "",
              f"torch.profiler over 16 steps (one lazy R1 step among them), self time of each operator per step, "
              f"summed by kind; {total:.3f} s per step under the profiler.", "",
              "| kind | s / step | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {v / total:.0%} |" for k, v in sorted(split.items(), key=lambda kv: -kv[1])]
    out = ROOT / "benchmarks" / "results" / "train_step.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
