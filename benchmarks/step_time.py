"""Cost of RED distillation per training step, against its unavoidable parts.

Measures, in one process and interleaved round by round:
  (a) one distillation step: ``Distiller`` forward (teacher under no_grad + student
      with scoped hooks + RED loss), backward, optimizer step;
  (b) a teacher forward under no_grad followed by one plain training step (CE only)
      of the same student (a copy, RED blocks included, so architectures match).
The ratio (a) / (b) is the overhead of the distillation machinery (hooks, feature
capture, RED losses): target <= 1.15. A ratio against the vanilla student (no RED
blocks) is reported too, for information.

    python benchmarks/step_time.py            # CPU, writes benchmarks/results/step_time.{json,md}
    python benchmarks/step_time.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(teacher_spec: str, student_spec: str, in_shape: tuple[int, ...], num_classes: int, device):
    """Teacher, vanilla student, RED Distiller and a plain copy of the RED student."""
    from redistill.distill import Distiller, REDMethod, auto_pairs
    from redistill.models import create_model

    kw = dict(num_classes=num_classes, in_channels=in_shape[0])
    teacher = create_model(teacher_spec, **kw)
    student = create_model(student_spec, **kw)
    vanilla = copy.deepcopy(student)
    example = torch.randn(2, *in_shape)
    pairs = auto_pairs(student, teacher, example)
    method = REDMethod(pairs)
    student = method.setup(student.eval(), teacher.eval(), example).train()  # RED surgery
    distiller = Distiller(student, teacher, method)
    distiller.to(device).train()
    red_student = copy.deepcopy(distiller.student).to(device).train()
    return distiller, red_student, vanilla.to(device).train(), pairs


def make_steps(distiller, red_student, vanilla, lr: float = 0.05):
    """Three closures doing one training step each on (x, y)."""
    opt_d = torch.optim.SGD(distiller.trainable_parameters(), lr=lr, momentum=0.9)
    opt_r = torch.optim.SGD(red_student.parameters(), lr=lr, momentum=0.9)
    opt_v = torch.optim.SGD(vanilla.parameters(), lr=lr, momentum=0.9)
    teacher = distiller.teacher

    def distill_step(x, y):
        opt_d.zero_grad(set_to_none=True)
        _, terms = distiller(x, y)
        distiller.total_loss(terms).backward()
        opt_d.step()

    def plain_step(model: nn.Module, opt):
        def step(x, y):
            with torch.no_grad():
                teacher(x)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return step

    return {"distill": distill_step, "teacher+red_student": plain_step(red_student, opt_r),
            "teacher+vanilla_student": plain_step(vanilla, opt_v)}


def measure(steps: dict, x, y, rounds: int, steps_per_round: int, warmup: int, device, clock=time.perf_counter):
    """Seconds per step, one list entry per round; the step kinds alternate every round.

    ``clock`` is ``time.perf_counter`` (wall) or ``time.process_time`` (CPU time of this
    process: on a CPU shared with other jobs, with one thread, it counts only this work).
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn(x, y)
    _sync(device)
    times = {k: [] for k in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # no fixed order bias
        for k in order:
            _sync(device)
            t0 = clock()
            for _ in range(steps_per_round):
                steps[k](x, y)
            _sync(device)
            times[k].append((clock() - t0) / steps_per_round)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="cifar_resnet20")
    p.add_argument("--student", default="cifar_resnet20:strides=4,1,1,1")
    p.add_argument("--input", default="1x28x28", help="C x H x W of one image")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="wall time, or CPU time of this process (CPU only; use with --threads 1 on a shared machine)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for step_time.{json,md}")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    in_shape = tuple(int(v) for v in args.input.lower().split("x"))
    distiller, red_student, vanilla, pairs = build(args.teacher, args.student, in_shape, args.num_classes, device)
    x = torch.randn(args.batch_size, *in_shape, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    steps = make_steps(distiller, red_student, vanilla)
    if args.clock == "process" and device.type != "cpu":
        p.error("--clock process measures CPU work only; use --clock wall on a GPU")
    clock = time.process_time if args.clock == "process" else time.perf_counter
    times = measure(steps, x, y, args.rounds, args.steps, args.warmup, device, clock)

    med = {k: statistics.median(v) for k, v in times.items()}
    # Ratios per round (same conditions), then their median: robust to load changes.
    ratio = statistics.median(d / b for d, b in zip(times["distill"], times["teacher+red_student"]))
    ratio_v = statistics.median(d / b for d, b in zip(times["distill"], times["teacher+vanilla_student"]))
    result = {
        "teacher": args.teacher,
        "student": args.student,
        "pairs": [f"{p.student}{':in' if p.side == 'in' else ''} <- {p.teacher}{':in' if p.side == 'in' else ''}"
                  for p in pairs],
        "input": list(in_shape),
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "torch": torch.__version__,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "median_step_s": med,
        "ratio": ratio,
        "ratio_vs_vanilla_student": ratio_v,
        "ratio_of_medians": med["distill"] / med["teacher+red_student"],
        "target": 1.15,
        "meets_target": ratio <= 1.15,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "step_time" if device.type == "cpu" else f"step_time_{device.type}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Distillation step time",
        "",
        "`" + " ".join(["python benchmarks/step_time.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
        "",
        f"Teacher `{args.teacher}`, student `{args.student}` with RED pairs (auto): "
        + ", ".join(f"`{s}`" for s in result["pairs"]) + ".",
        f"Input {args.input}, batch {args.batch_size}, device {result['device_name']} ({device}), "
        f"{result['threads']} threads, torch {torch.__version__}; {args.rounds} interleaved rounds of "
        f"{args.steps} steps, medians; clock: "
        + ("CPU time of the process (the machine was shared with other jobs)" if args.clock == "process" else "wall")
        + ".",
        "",
        "| step | median ms |",
        "|---|---|",
    ]
    md += [f"| {k} | {1000 * v:.2f} |" for k, v in med.items()]
    md += [
        "",
        f"**Ratio distill / (teacher forward + RED-student training step): {ratio:.3f}** "
        f"(target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'}).",
        f"(Median of the per-round ratios; the ratio of the median step times is "
        f"{result['ratio_of_medians']:.3f}.)",
        f"Ratio against teacher forward + vanilla-student step (no RED blocks): {ratio_v:.3f}.",
        "",
    ]
    (args.out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
