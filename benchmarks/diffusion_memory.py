"""Peak activation memory of the DDPM UNet teacher and its x2 student, next to the authors' figure.

The model is the authors' CIFAR-10 configuration (``ddpm_unet``'s defaults: ch=128, ch_mult
1,2,2,2, two residual blocks per level, attention at level 1 = 16 x 16) on 1 x 3 x 32 x 32 with
one timestep; the student is ``derive_student(teacher, 2)`` (strides 2,2,2,1). Three figures per
model:

- ``layer`` and ``live`` from :func:`redistill.memory.analyze_memory` (fp32 and int8);
- the authors' counting rule (their ``analysis/peak_memory.py``, DDPM entry), re-implemented here
  from module input/output shapes, per image in fp32: it gives their 3.50 -> 0.876 MiB;
- the same rule with its skip bookkeeping corrected (one skip released per decoder residual
  block, as the forward does, instead of one per decoder module).

What the rule counts, per module, on top of the skips it believes are still held: the time
embedding MLP's larger output; the head's input + output; a residual block's input plus the
larger of (conv1 input + conv1 output + time projection output) and (conv2 input + conv2 output);
a down- or up-sample's output only; the tail's output. Attention is never counted.

Writes ``benchmarks/results/diffusion_memory.{json,md}``.
Run: ``.venv/bin/python benchmarks/diffusion_memory.py [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from redistill.flops import count_flops, count_params
from redistill.memory import analyze_memory, fmt_bytes
from redistill.models import build_family, derive_student, spec_string
from redistill.models.unet import DDPMUNet, ResBlock

SHAPE = (1, 3, 32, 32)
MIB = 1024**2
AUTHORS_MIB = {"teacher": 3.50, "student": 0.876}  # their published estimate (README / paper)


def _per_image_fp32(t: torch.Tensor) -> int:
    return t[0].numel() * 4


def _record(model: DDPMUNet) -> dict[str, dict[str, int]]:
    """Per-image fp32 bytes of the inputs/outputs the rule reads, from one forward."""
    sizes: dict[str, dict[str, int]] = {}
    watched = {"time_embedding.fc1", "time_embedding.fc2", "head", "tail"}
    for name, module in model.named_modules():
        if name.startswith(("downblocks.", "middleblocks.", "upblocks.")) and name.count(".") == 1:
            watched.add(name)
        if isinstance(module, ResBlock):
            watched.update(f"{name}.{child}" for child in ("conv1", "conv2", "temb_proj"))
    handles = []

    def hook(name: str):
        def record(_m, args, out):
            sizes[name] = {"in": _per_image_fp32(args[0]), "out": _per_image_fp32(out)}
        return record

    try:
        for name in watched:
            handles.append(model.get_submodule(name).register_forward_hook(hook(name)))
        with torch.no_grad():
            model.eval()(torch.zeros(SHAPE), torch.zeros(SHAPE[0], dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return sizes


def authors_rule(model: DDPMUNet, fixed: bool = False) -> dict:
    """The authors' DDPM peak-memory rule on ``model`` (see the module docstring).

    Args:
        fixed: release one skip per decoder residual block (the forward's bookkeeping) instead
            of one per decoder module, which also drops skips at the three up-samples.
    Returns:
        ``{"peak": bytes, "where": module, "skips_held_at_peak": bytes}``.
    """
    s = _record(model)

    def block(name: str) -> int:
        if isinstance(model.get_submodule(name), ResBlock):
            c1, c2, tp = s[f"{name}.conv1"], s[f"{name}.conv2"], s[f"{name}.temb_proj"]
            return s[name]["in"] + max(c1["in"] + c1["out"] + tp["out"], c2["in"] + c2["out"])
        return s[name]["out"]  # down- and up-samples: their output only

    costs: list[tuple[int, str, int]] = [  # (bytes, module, skips held)
        (max(s["time_embedding.fc1"]["out"], s["time_embedding.fc2"]["out"]), "time_embedding", 0),
        (s["head"]["in"] + s["head"]["out"], "head", 0),
    ]
    skips = [s["head"]["out"]]
    for i in range(len(model.downblocks)):
        name = f"downblocks.{i}"
        costs.append((block(name) + sum(skips), name, sum(skips)))
        skips.append(s[name]["out"])
    mid = max(range(len(model.middleblocks)), key=lambda i: block(f"middleblocks.{i}"))
    costs.append((block(f"middleblocks.{mid}") + sum(skips), f"middleblocks.{mid}", sum(skips)))
    for i, takes_skip in enumerate(model.up_takes_skip):
        if takes_skip or not fixed:
            skips = skips[:-1]
        name = f"upblocks.{i}"
        costs.append((block(name) + sum(skips), name, sum(skips)))
    costs.append((s["tail"]["out"], "tail", 0))
    peak, where, held = max(costs)
    return {"peak": peak, "where": where, "skips_held_at_peak": held}


def side(model: DDPMUNet) -> dict:
    """Every figure of one model."""
    fp32 = analyze_memory(model, SHAPE, dtype="fp32", convention="live")
    layer = analyze_memory(model, SHAPE, dtype="fp32", convention="layer")
    int8 = analyze_memory(model, SHAPE, dtype="int8", convention="live")
    return {
        "fp32_layer": fp32.peaks["layer"], "fp32_live": fp32.peaks["live"], "fp32_eager": fp32.peaks["eager"],
        "int8_layer": int8.peaks["layer"], "int8_live": int8.peaks["live"],
        "peak_live_at": f"{fp32.peak_module} ({fp32.peak_op})",
        "peak_layer_at": f"{layer.peak_module} ({layer.peak_op})",
        "authors_rule": authors_rule(model), "authors_rule_fixed": authors_rule(model, fixed=True),
        "params": count_params(model), "flops_per_step": count_flops(model, SHAPE),
    }


def mib(n: int) -> str:
    return f"{n / MIB:.4f} MiB"


def to_markdown(r: dict, meta: dict) -> str:
    t, s = r["teacher"], r["student"]
    ratio = lambda key: t[key] / s[key]  # noqa: E731
    rows = [
        ("authors' published estimate", f"{AUTHORS_MIB['teacher']:.2f} MiB", f"{AUTHORS_MIB['student']:.3f} MiB",
         f"{AUTHORS_MIB['teacher'] / AUTHORS_MIB['student']:.2f}x"),
        ("authors' rule, re-counted here", mib(t["authors_rule"]["peak"]), mib(s["authors_rule"]["peak"]),
         f"{t['authors_rule']['peak'] / s['authors_rule']['peak']:.2f}x"),
        ("authors' rule, skips fixed", mib(t["authors_rule_fixed"]["peak"]), mib(s["authors_rule_fixed"]["peak"]),
         f"{t['authors_rule_fixed']['peak'] / s['authors_rule_fixed']['peak']:.2f}x"),
        ("`layer` (paper's convention), fp32", mib(t["fp32_layer"]), mib(s["fp32_layer"]), f"{ratio('fp32_layer'):.2f}x"),
        ("`live`, fp32", mib(t["fp32_live"]), mib(s["fp32_live"]), f"{ratio('fp32_live'):.2f}x"),
        ("`eager` (what PyTorch kept), fp32", mib(t["fp32_eager"]), mib(s["fp32_eager"]), f"{ratio('fp32_eager'):.2f}x"),
        ("`layer`, int8", fmt_bytes(t["int8_layer"]), fmt_bytes(s["int8_layer"]), f"{ratio('int8_layer'):.2f}x"),
        ("`live`, int8", fmt_bytes(t["int8_live"]), fmt_bytes(s["int8_live"]), f"{ratio('int8_live'):.2f}x"),
        ("parameters (M)", f"{t['params'] / 1e6:.3f}", f"{s['params'] / 1e6:.3f}", ""),
        ("GFLOPs per denoising step", f"{t['flops_per_step'] / 1e9:.3f}", f"{s['flops_per_step'] / 1e9:.3f}",
         f"{ratio('flops_per_step'):.2f}x"),
    ]
    held_t = t["authors_rule_fixed"]["skips_held_at_peak"]
    held_s = s["authors_rule_fixed"]["skips_held_at_peak"]
    lines = [
        "# DDPM UNet: teacher vs x2 student peak memory",
        "",
        f"Generated by `benchmarks/diffusion_memory.py` on {meta['date']} ({meta['platform']}, torch {meta['torch']}, "
        f"{meta['seconds']:.0f} s). Teacher `{r['teacher_spec']}`, student `{r['student_spec']}` "
        f"(`derive_student(teacher, 2)`), input {'x'.join(map(str, SHAPE))} plus one timestep, batch 1. "
        "Peaks are activation bytes (weights excluded); MiB = 2^20 bytes.",
        "",
        "| figure | teacher [1,2,2,2] | student [2,2,2,1] | ratio |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        f"Where the peaks sit: `live` teacher {t['peak_live_at']}, student {s['peak_live_at']}; `layer` teacher "
        f"{t['peak_layer_at']}, student {s['peak_layer_at']}; authors' rule teacher {t['authors_rule']['where']}, "
        f"student {s['authors_rule']['where']}.",
        "",
        "## Why the figures differ",
        "",
        f"- The authors' rule peaks at `{t['authors_rule']['where']}`, the first decoder block of the full-resolution "
        "level: its concatenated input, that input after GroupNorm + SiLU (conv1's input), conv1's output and the "
        "time projection. With skips held counted correctly the same rule adds "
        f"{mib(held_t)} (teacher) / {mib(held_s)} (student): the outputs of `head` and `downblocks.0`, which wait for "
        "the two later decoder blocks of that level. The rule drops one skip per decoder module, up-samples "
        "included (15 modules for 12 skips), so by that block it believes none is left. Corrected, it gives "
        f"{mib(t['authors_rule_fixed']['peak'])} -> {mib(s['authors_rule_fixed']['peak'])}.",
        f"- `layer` (conv/matmul/merge inputs + outputs + everything alive across them) equals the corrected rule up to "
        f"the time embedding: {fmt_bytes(t['fp32_layer'] - t['authors_rule_fixed']['peak'])} teacher, "
        f"{fmt_bytes(s['fp32_layer'] - s['authors_rule_fixed']['peak'])} student (the 4 ch = 512-float embedding, "
        "alive for the whole forward, is held at conv1; the rule adds the 128-float time projection instead).",
        "- `live` also counts GroupNorm and SiLU outputs, which are not layers: at the peak the concatenated input, "
        "its normalised copy and its activated copy are alive together (an unfused runtime), plus the held skips.",
        "- Attention (level 1) is not counted by the authors' rule; it does not set any peak here.",
        "- The x2 student runs every map above the bottleneck at half the resolution, so each map at the peak is 4x "
        "smaller; the time embedding (2 KiB) does not shrink, which leaves the ratios at "
        f"{ratio('fp32_layer'):.4f}x (`layer`) and {ratio('fp32_live'):.4f}x (`live`): the issue's target "
        f"(>= 4x) is {'met' if min(ratio('fp32_layer'), ratio('fp32_live')) >= 4 else 'missed by that embedding'}.",
        "",
        "The authors' DDPM entry point (`analysis/efficiency_metrics_ddpm.py` -> `PeakMemoryDDPM`) does not set the "
        "fp32/int8 switch that makes their hooks record byte sizes; the rule is evaluated here per image in fp32, "
        "as their classification entry point does. That reproduces the teacher's 3.50 MiB "
        f"({t['authors_rule']['peak']:,} bytes) and gives the student {s['authors_rule']['peak']:,} bytes = "
        f"{s['authors_rule']['peak'] / MIB:.5f} MiB, about 500 bytes under the published 0.876; nothing in the rule "
        "adds those bytes, so the last digit reads as rounded up.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    teacher = build_family("ddpm_unet")
    student = derive_student(teacher, 2)
    result = {
        "teacher_spec": spec_string(teacher.info.spec), "student_spec": spec_string(student.info.spec),
        "teacher_options": teacher.info.spec, "input": list(SHAPE), "authors_published_mib": AUTHORS_MIB,
        "teacher": side(teacher.module.eval()), "student": side(student.module.eval()),
    }
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "platform": platform.platform(),
            "torch": torch.__version__, "seconds": time.time() - start}
    (out / "diffusion_memory.json").write_text(json.dumps({"meta": meta, **result}, indent=1) + "\n")
    (out / "diffusion_memory.md").write_text(to_markdown(result, meta))
    for key in ("authors_rule", "authors_rule_fixed"):
        print(f"{key}: {mib(result['teacher'][key]['peak'])} -> {mib(result['student'][key]['peak'])}")
    print(f"layer: {mib(result['teacher']['fp32_layer'])} -> {mib(result['student']['fp32_layer'])}; "
          f"live: {mib(result['teacher']['fp32_live'])} -> {mib(result['student']['fp32_live'])}")
    print(f"wrote {out / 'diffusion_memory.md'}")


if __name__ == "__main__":
    main()
