"""Training-step time on the CPU, NCHW against channels-last, for the models this project trains on CPUs.

One training step (forward, backward, SGD step) of each model, and one RED distillation step of each
protocol pair (teacher forward under no_grad, student with its RED blocks, loss, backward, step), timed
in both memory formats, interleaved round by round, medians. The same weights, batch and random draws go
to both formats; they compute the same function in a different order of summation, so the loss of the
second step (after one update) of each is compared with the same step in float64. Training-mode
BatchNorm, where the formats differ most, is measured alone too. ``run.channels_last`` decides which
format the trainer uses; this is what its default rests on.

    python benchmarks/cpu_channels_last.py --threads 1 --clock process   # writes cpu_channels_last.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import build  # noqa: E402  (the RED distiller of a teacher / student pair)

RESULTS = Path(__file__).resolve().parent / "results"
UNET = {"ch": 16, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn": [1], "dropout": 0.0, "norm_groups": 8}
# name, teacher spec, student spec (None: a plain step of the teacher spec alone), C x H x W, batch, options
CASES = (
    ("demo teacher, 28 px", "cifar_resnet20", None, (1, 28, 28), 128, {}),
    ("demo RED x4, 28 px", "cifar_resnet20", "cifar_resnet20:strides=4,1,1,1", (1, 28, 28), 128, {}),
    ("r20 teacher, 56 px", "cifar_resnet20:strides=1,2,2,2", None, (1, 56, 56), 128, {}),
    ("r20 RED x8, 56 px", "cifar_resnet20:strides=1,2,2,2", "cifar_resnet20:strides=4,1,2,1", (1, 56, 56), 128, {}),
    ("MobileNetV3-small teacher, 64 px", "mobilenetv3_small-1-22121111211", None, (1, 64, 64), 128, {}),
    ("MobileNetV3-small RED x4, 64 px", "mobilenetv3_small-1-22121111211", "mobilenetv3_small-4-22111111111",
     (1, 64, 64), 128, {}),
    ("MobileNetV2 teacher, 64 px", "mobilenetv2-1-1222121", None, (1, 64, 64), 128, {}),
    ("diffusion demo UNet teacher, 32 px", "ddpm_unet", None, (1, 32, 32), 32, UNET),
)


def _loss(model, x, y, diffusion: bool):
    if diffusion:  # epsilon prediction at random timesteps: the shape of the diffusion task's step
        t = torch.randint(0, 1000, (x.shape[0],))
        return F.mse_loss(model(x, t), y)
    return F.cross_entropy(model(x), y)


def make_step(case, memory_format, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A closure doing one training step in ``memory_format`` (and ``dtype``) and returning its loss."""
    name, teacher_spec, student_spec, shape, batch, options = case
    from redistill.models import create_model

    torch.manual_seed(seed)
    diffusion = teacher_spec.startswith("ddpm_unet")
    x = torch.randn(batch, *shape)
    y = torch.randn(batch, *shape) if diffusion else torch.randint(0, 10, (batch,))
    x = x.to(dtype).contiguous(memory_format=memory_format)
    y = y.to(dtype) if diffusion else y
    if student_spec is None:
        kw = {"in_channels": shape[0], **options} if diffusion else {"num_classes": 10, "in_channels": shape[0]}
        model = create_model(teacher_spec, **kw).train().to(dtype).to(memory_format=memory_format)
        params, loss_of = model.parameters(), lambda: _loss(model, x, y, diffusion)
    else:
        distiller = build(teacher_spec, student_spec, shape, 10, torch.device("cpu"))[0]
        distiller.to(dtype).to(memory_format=memory_format)
        params, loss_of = distiller.trainable_parameters(), lambda: distiller.total_loss(distiller(x, y)[1])
    if memory_format is torch.channels_last:
        from redistill.train.trainer import channels_last_cpu_hazard

        hazard = channels_last_cpu_hazard(model if student_spec is None else distiller)
        if hazard is not None:  # the trainer trains such a model in NCHW: nothing to compare
            raise ValueError(f"{name}: {hazard} hits oneDNN's channels-last bug; the trainer uses NCHW for it")
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        opt.step()
        return loss.item()
    return step


def measure(case, rounds: int, steps: int, warmup: int, clock):
    fns = {"nchw": make_step(case, torch.contiguous_format), "channels_last": make_step(case, torch.channels_last)}
    losses = {}
    exact = make_step(case, torch.contiguous_format, dtype=torch.float64)
    for k, fn in {**fns, "float64": exact}.items():  # same weights, batch and random draws in every format
        torch.manual_seed(1)
        losses[k] = [fn(), fn()]
    del exact
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            t0 = clock()
            for _ in range(steps):
                fns[k]()
            times[k].append((clock() - t0) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = statistics.median(a / b for a, b in zip(times["nchw"], times["channels_last"]))
    return {"case": case[0], "teacher": case[1], "student": case[2], "input": list(case[3]), "batch": case[4],
            "median_step_s": med, "speedup": speedup, "losses": losses,
            "loss_rel_error": {k: abs(losses[k][1] - losses["float64"][1]) / max(abs(losses["float64"][1]), 1e-12)
                               for k in fns}}


def batchnorm_error(shift: float, shape=(128, 32, 32, 32)) -> dict[str, float]:
    """Largest absolute error of a training-mode BatchNorm (batch statistics) against float64, in each format,
    on inputs ``0.5 * randn + shift`` (the outputs are of unit scale)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 0.5 + shift
    exact = F.batch_norm(x.double(), None, None, training=True).float()
    return {name: (F.batch_norm(x.contiguous(memory_format=fmt), None, None, training=True) - exact).abs().max().item()
            for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="wall time, or CPU time of this process (use with --threads 1 on a shared machine)")
    p.add_argument("--only", nargs="*", default=None, help="case names containing one of these words")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    cases = [c for c in CASES if not args.only or any(w.lower() in c[0].lower() for w in args.only)]
    rows = []
    for case in cases:
        rows.append(measure(case, args.rounds, args.steps, args.warmup, clock))
        r = rows[-1]
        print(f"{r['case']}: nchw {1000 * r['median_step_s']['nchw']:.0f} ms, channels-last "
              f"{1000 * r['median_step_s']['channels_last']:.0f} ms, speed-up x{r['speedup']:.2f}", flush=True)
    bn = {f"{shift:g}": batchnorm_error(shift) for shift in (0.0, 10.0)}
    result = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "clock": args.clock, "torch": torch.__version__, "rounds": args.rounds, "steps_per_round": args.steps,
              "rows": rows, "batchnorm_error": bn}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_channels_last.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Training-step time on the CPU: NCHW vs channels-last", "",
          "`" + " ".join(["python benchmarks/cpu_channels_last.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
          "", f"Device {result['device']} (cpu), {result['threads']} threads, torch {torch.__version__}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps, medians; clock: "
          + ("CPU time of the process (the machine was shared with other jobs)" if args.clock == "process" else "wall")
          + ". A RED row is one distillation step (teacher forward, student with its RED blocks, loss, backward, step).",
          "", "| case | batch | NCHW ms | channels-last ms | speed-up (median per round) | 2nd-step loss rel. error vs float64: NCHW / channels-last |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['case']} | {r['batch']} | {1000 * r['median_step_s']['nchw']:.0f} | "
           f"{1000 * r['median_step_s']['channels_last']:.0f} | x{r['speedup']:.2f} | "
           f"{r['loss_rel_error']['nchw']:.1e} / {r['loss_rel_error']['channels_last']:.1e} |"
           for r in rows]
    md += ["", "Where the results differ: training-mode BatchNorm (batch statistics) of a 128x32x32x32 input "
           "`0.5 * randn + shift`, largest absolute error against float64 (outputs of unit scale):", "",
           "| shift | NCHW | channels-last |", "|---|---|---|"]
    md += [f"| {k} | {v['nchw']:.1e} | {v['channels_last']:.1e} |" for k, v in bn.items()]
    (args.out / "cpu_channels_last.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
