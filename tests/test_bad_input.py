"""Bad and hostile input over every subcommand: exit 2, one stderr line naming the problem, no traceback.

Each row is ``redistill ARGS``, the exit code and words the error line must hold. Rows run
in-process through :func:`redistill.cli.main.main` from a scratch directory holding the files
below; ``RUN`` and ``EXPORT`` stand for a tiny trained run and its export. Errors torch or the OS
raise (a file where a directory should be, an allocation too large) go through the CLI's catch-all
and are held to the same one-line promise.
"""

from __future__ import annotations

import resource
import shlex
import time
from pathlib import Path

import pytest

from redistill.cli.main import main
from redistill.train.config import RANGES


# A run that trains in about a second: 64 images of 8 x 8, a 4-wide ResNet-8, one epoch.
TINY = """\
model:
  student: cifar_resnet8
  options: {width: 4}
data:
  name: synthetic
  workers: 0
  batch_size: 16
  synthetic: {train_size: 64, test_size: 16, image_size: 8}
run:
  epochs: 1
  progress: false
  device: cpu
"""

# A diffusion run on the stand-in denoiser (a user factory: sampling it needs --trust-code).
DIFFUSION_TINY = f"""\
task: diffusion
model:
  student: {Path(__file__).with_name("denoiser_standin.py")}:tiny_denoiser
data:
  name: synthetic
  workers: 0
  batch_size: 16
  normalize: symmetric
  augment: {{crop: none}}
  synthetic: {{train_size: 40, test_size: 8, image_size: 8}}
optim: {{name: adam, lr: 2e-4, weight_decay: 0}}
run:
  epochs: 1
  progress: false
  device: cpu
"""


def _laughs(levels: int = 9) -> str:
    """A "billion laughs" document: 9 aliases per level, 9**levels strings once expanded."""
    lines = ["model:", "  student: cifar_resnet8", "  options:", f"    l0: &l0 [{', '.join(['lol'] * 9)}]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


FILES = {
    "tiny.yaml": TINY,
    "bomb.yaml": _laughs(),
    "deep.yaml": "model: {student: cifar_resnet8, options: {x: " + "[" * 3000 + "]" * 3000 + "}}\n",
    "self.yaml": "model: {student: cifar_resnet8, options: &a {x: *a}}\n",
    "dup.yaml": "model: {student: cifar_resnet8}\nmodel: {student: cifar_resnet20}\n",
    "list.yaml": "- model\n- data\n",
    "broken.yaml": "model: {student: cifar_resnet8\n",
    "tag.yaml": 'model: !!python/object/apply:os.system ["echo owned"]\n',
    "neg_lr.yaml": TINY + "optim: {lr: -1e-3}\n",
    "unknown_section.yaml": TINY + "trainer: {epochs: 3}\n",
    "fac.py": "def boom(**kw):\n    raise ValueError('bad width')\n\n\ndef needs(depth):\n    return None\n",
    "plain.txt": "not a directory\n",
    "nockpt/config.yaml": TINY,  # a run directory whose training never wrote a checkpoint
    "bessel.py": ("import torch\nimport torch.nn as nn\n\n\nclass Head(nn.Module):\n    def forward(self, x):\n"
                  "        return torch.special.bessel_j0(x).mean((2, 3))\n\n\n"
                  "def make(**kw):\n    return nn.Sequential(nn.Conv2d(3, 4, 1), Head())\n"),
    "empty.yaml": "",
}
BINARY = {"latin.yaml": b"model:\n  student: cifar_resnet8\noptim: {lr: 0.1}  # caf\xe9\n"}


def _override_bomb() -> str:
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcd", "bcde"):
        levels.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    return "model.options={" + ", ".join(levels) + "}"


def row(cmd: str, *words: str, code: int = 2, marks: tuple = ()):
    """One table row: ``redistill CMD`` exits with ``code``, its one stderr line holding ``words``."""
    return pytest.param(cmd, code, words, id=cmd, marks=list(marks))


# (key, bad value, the valid range as the message words it, the value as the message shows it)
BAD_VALUES = [
    ("model.num_classes", "0", ">= 1 (or null)", "0"),
    ("model.in_channels", "-3", ">= 1 (or null)", "-3"),
    ("data.image_size", "0", ">= 1 (or null)", "0"),
    ("data.canvas", "-28", ">= 1 (or null)", "-28"),
    ("data.subset", "-5", ">= 1 (or null)", "-5"),
    ("data.val_fraction", "1", "in [0, 1)", "1.0"),
    ("data.val_fraction", "-0.1", "in [0, 1)", "-0.1"),
    ("data.val_subset", "0", ">= 1 (or null)", "0"),
    ("data.test_subset", "-2", ">= 1 (or null)", "-2"),
    ("data.split_seed", "-1", ">= 0", "-1"),
    ("data.batch_size", "0", ">= 1", "0"),
    ("data.eval_batch_size", "0", ">= 1 (or null)", "0"),
    ("data.workers", "-1", ">= 0", "-1"),
    ("data.augment.padding", "-4", ">= 0", "-4"),
    ("data.augment.randaugment_ops", "-1", ">= 0", "-1"),
    ("data.augment.randaugment_magnitude", "31", "in [0, 30]", "31"),
    ("data.augment.randaugment_magnitude", "-1", "in [0, 30]", "-1"),
    ("data.augment.cutmix_alpha", "-0.5", ">= 0", "-0.5"),
    ("data.augment.mixup_alpha", "-1", ">= 0", "-1.0"),
    ("data.synthetic.train_size", "0", ">= 1", "0"),
    ("data.synthetic.test_size", "-1", ">= 1", "-1"),
    ("data.synthetic.num_classes", "0", ">= 1", "0"),
    ("data.synthetic.channels", "0", ">= 1", "0"),
    ("data.synthetic.image_size", "0", ">= 1", "0"),
    ("optim.lr", "0", "> 0", "0.0"),
    ("optim.lr", "-1e-3", "> 0", "-0.001"),  # a YAML 1.2 float, read as one
    ("optim.lr", ".inf", "> 0", "inf"),
    ("optim.lr", ".nan", "> 0", "nan"),
    ("optim.momentum", "1", "in [0, 1)", "1.0"),
    ("optim.momentum", "-0.9", "in [0, 1)", "-0.9"),
    ("optim.weight_decay", "-5e-4", ">= 0", "-0.0005"),
    ("optim.betas", "[0.9, 1.0]", "two values, each in [0, 1)", "[0.9, 1.0]"),
    ("optim.betas", "[-0.1, 0.999]", "two values, each in [0, 1)", "[-0.1, 0.999]"),
    ("optim.betas", "[0.9]", "two values, each in [0, 1)", "[0.9]"),
    ("optim.betas", "[0.9, 0.99, 0.999]", "two values, each in [0, 1)", "[0.9, 0.99, 0.999]"),
    ("optim.label_smoothing", "1.5", "in [0, 1)", "1.5"),
    ("optim.label_smoothing", "-0.1", "in [0, 1)", "-0.1"),
    ("optim.grad_clip", "-1", "> 0 (or null)", "-1.0"),
    ("optim.grad_clip", "0", "> 0 (or null)", "0.0"),
    ("schedule.warmup_epochs", "-1", ">= 0", "-1.0"),
    ("schedule.milestones", "[0, 5]", "positive and increasing (epochs, e.g. [30, 60])", "[0, 5]"),
    ("schedule.milestones", "[5, 3]", "positive and increasing (epochs, e.g. [30, 60])", "[5, 3]"),
    ("schedule.milestones", "[3, 3]", "positive and increasing (epochs, e.g. [30, 60])", "[3, 3]"),
    ("schedule.gamma", "0", "> 0", "0.0"),
    ("schedule.gamma", "-0.1", "> 0", "-0.1"),
    ("schedule.min_lr", "-1e-5", ">= 0", "-1e-05"),
    ("distill.task_weight", "-0.5", ">= 0 (or null)", "-0.5"),
    ("data.pad", "-2", ">= 0", "-2"),
    ("diffusion.timesteps", "0", ">= 1", "0"),
    ("diffusion.beta_start", "-1e-4", "in [0, 1)", "-0.0001"),
    ("diffusion.beta_end", "1", "in [0, 1)", "1.0"),
    ("diffusion.ema_decay", "1", "in [0, 1)", "1.0"),
    ("diffusion.ema_decay", "-0.5", "in [0, 1)", "-0.5"),
    ("diffusion.eval_seed", "-1", ">= 0", "-1"),
    ("run.epochs", "0", ">= 1", "0"),
    ("run.seed", "-1", ">= 0", "-1"),
    ("run.log_every", "0", ">= 1", "0"),
]

RANGE_ROWS = [
    row(f"train tiny.yaml {shlex.quote(f'{key}={value}')} --out out",
        f"config key '{key}' must be {valid}, got {shown}")
    for key, value, valid, shown in BAD_VALUES
]

TRAIN_ROWS = [
    # the config file itself
    row("train missing.yaml", "config file missing.yaml not found"),
    row("train .", "is a directory"),
    row("train latin.yaml", "latin.yaml", "not UTF-8"),
    row("train broken.yaml", "broken.yaml", "not valid YAML", "line 2"),
    row("train bomb.yaml", "bomb.yaml", "aliases expand to more than"),
    row("train self.yaml", "self.yaml", "alias refers to a node that contains it"),
    row("train deep.yaml", "deep.yaml", "nested too deeply"),
    row("train dup.yaml", "dup.yaml", "duplicate key 'model'"),
    row("train list.yaml", "must be a mapping of sections", "list"),
    row("train tag.yaml", "tag.yaml", "python/object"),
    row("train plain.txt", "config must be a mapping of sections, got str"),
    row("train empty.yaml", "'model.student' is required"),
    row("train neg_lr.yaml", "'optim.lr' must be > 0", "got -0.001"),
    # unknown keys
    row("train tiny.yaml optim.lrr=0.1", "unknown config key 'optim.lrr'", "did you mean optim.lr"),
    row("train tiny.yaml data.augment.flipp=true", "'data.augment.flipp'", "data.augment.flip"),
    row("train tiny.yaml trainer.epochs=3", "unknown config key 'trainer'"),
    row("train unknown_section.yaml", "unknown config key 'trainer'"),
    # wrong types and choices
    row("train tiny.yaml optim.lr=fast", "'optim.lr' expects float, got str"),
    row("train tiny.yaml run.epochs=2.5", "'run.epochs' expects int"),
    row("train tiny.yaml run.epochs=true", "'run.epochs' expects int, got bool"),
    row("train tiny.yaml data.subset=[1]", "'data.subset' expects int or null"),
    row("train tiny.yaml optim.betas=[0.9,x]", "'optim.betas[1]' expects float"),
    row("train tiny.yaml data=3", "'data' expects mapping"),
    row("train tiny.yaml optim.lr.x=1", "'optim.lr' expects float, got dict"),
    row("train tiny.yaml optim.name=lamb", "'optim.name' must be one of sgd, adam, adamw"),
    row("train tiny.yaml data.name=fashion", "did you mean fashion_mnist"),
    row("train tiny.yaml data.augment.crop=random", "'data.augment.crop' must be one of"),
    row("train tiny.yaml schedule.name=multistep", "needs schedule.milestones"),
    row("train tiny.yaml distill.pairs=bogus", "'distill.pairs'", "'auto'"),
    row("train tiny.yaml distill.method=red", "needs model.teacher"),
    # the diffusion task
    row("train tiny.yaml task=denoise", "'task' must be one of classification, diffusion"),
    row("train tiny.yaml task=diffusion", "task diffusion denoises images in [-1, 1]", "data.normalize=symmetric"),
    row("train tiny.yaml task=diffusion data.normalize=symmetric diffusion.beta_start=0.05",
        "diffusion.beta_start (0.05) must be below diffusion.beta_end (0.02)"),
    row("train tiny.yaml task=diffusion data.normalize=symmetric data.augment.cutmix_alpha=1", "no labels to mix"),
    row("train tiny.yaml data.normalize=minmax", "'data.normalize' must be one of dataset, symmetric"),
    row("train tiny.yaml diffusion.variance=learned", "'diffusion.variance' must be one of fixed_large, fixed_small"),
    row("train tiny.yaml diffusion.ema=0.9", "unknown config key 'diffusion.ema'", "did you mean diffusion.ema_decay"),
    row("memory cifar_resnet8:num_classes=2.5 --input 1x3x8x8", "num_classes must be an integer"),
    row("memory cifar_resnet8:strides=1.5,1,2,2 --input 1x3x8x8", "strides must be integers"),
    row("train tiny.yaml 'model.options={width: 4, dropout: abc}'", "dropout must be a number"),
    row("train tiny.yaml model.student=cifar_resnet8:strides=2,1,1,2 distill.method=red model.teacher_checkpoint=RUN " + "'distill.options={red: {gate_kernel: \"3\"}}' --out out", "gate_kernel must be an odd integer"),
    row("train tiny.yaml model.student=cifar_resnet8:strides=2,1,1,2 distill.method=red model.teacher_checkpoint=RUN " + "'distill.options={red: {shortcut: \"no\"}}' --out out", "shortcut must be true or false"),
    # overrides
    row("train tiny.yaml optim.lr", "override 'optim.lr' is not key=value"),
    row("train tiny.yaml =3", "is not key=value"),
    row("train tiny.yaml optim.lr=[1", "override 'optim.lr=[1'", "not valid YAML"),
    row(f"train tiny.yaml '{_override_bomb()}'", "override 'model.options=", "aliases expand to more than"),
    # sizes against the data
    row("train tiny.yaml data.subset=1000 --out out", "'data.subset' is 1000", "58 training images"),
    row("train tiny.yaml data.val_subset=100 --out out", "'data.val_subset' is 100", "only 6 images"),
    row("train tiny.yaml data.val_fraction=0 data.val_subset=1 --out out", "'data.val_subset' is 1", "only 0"),
    row("train tiny.yaml data.test_subset=17 --out out", "'data.test_subset' is 17", "only 16 images"),
    row("train tiny.yaml data.batch_size=1000 --out out", "fewer than one batch of 1000"),
    row("train tiny.yaml data.canvas=4 --out out", "data.canvas=4 is smaller than the 8x8 images"),
    # models, data sets, devices, paths
    row("train tiny.yaml model.student=nosuchnet --out out", "unknown model 'nosuchnet'"),
    row("train tiny.yaml model.student=fac.py:boom --out out", "factory 'fac.py:boom' raised ValueError: bad width"),
    row("train tiny.yaml model.student=fac.py:needs --out out",
        "factory 'fac.py:needs' takes no parameter 'num_classes'"),
    row("train tiny.yaml model.student=missing.py:f --out out", "model file not found: missing.py"),
    row("train tiny.yaml 'model.options={widht: 4}' --out out", "no option 'widht'", "did you mean width"),
    row("train tiny.yaml distill.method=kd model.teacher=cifar_resnet8 model.teacher_checkpoint=missing --out out",
        "checkpoint not found: missing"),
    row("train tiny.yaml distill.method=nosuch model.teacher=cifar_resnet8 model.teacher_checkpoint=RUN --out out",
        "unknown distillation method 'nosuch'"),
    row("train tiny.yaml data.name=cifar10 --out out", "data.root is required for data.name=cifar10"),
    row("train tiny.yaml data.name=cifar10 data.root=missing --out out", "data set folder not found: missing"),
    row("train tiny.yaml run.device=tpu --out out", "run.device must be auto, cpu, cuda or cuda:N", "'tpu'"),
    row("train tiny.yaml run.device=cuda:99 --out out", "run.device is cuda:99"),
    row("train tiny.yaml --out RUN", "already exists", "--resume"),
    row("train tiny.yaml --resume --out no_such_run", "nothing to resume", "drop --resume"),
    row("train tiny.yaml --bogus", "unrecognized arguments: --bogus"),
    # an unwritable --out, and model and data that do not fit each other
    row("train tiny.yaml --out plain.txt/run", "plain.txt"),
    row("train tiny.yaml model.in_channels=3 --out out", "model.in_channels is 3", "1 channel"),
    row("train tiny.yaml model.num_classes=2 --out out", "model.num_classes is 2", "4 classes"),
    row("train tiny.yaml 'model.options={width: -1}' --out out", "width must be > 0, got -1"),
    row("train tiny.yaml 'model.options={width: 0}' --out out", "width must be > 0, got 0"),
]

MEMORY_ROWS = [
    row("memory nosuchnet", "unknown model 'nosuchnet'"),
    row("memory", "the following arguments are required: MODEL"),
    row("memory cifar_resnet8 --input 0x3x32x32", "--input '0x3x32x32' must be NxCxHxW or CxHxW"),
    row("memory cifar_resnet8 --input 3x32", "--input '3x32'"),
    row("memory cifar_resnet8 --input 1x3x8x8x2", "--input '1x3x8x8x2'"),
    row("memory cifar_resnet8 --input abc", "--input 'abc'"),
    row("memory cifar_resnet8 --input 1x3x8x8 --batch-size 0", "--batch-size must be positive, got 0"),
    row("memory cifar_resnet8 --input 1x3x8x8 --batch-size x", "--batch-size: invalid int value"),
    row("memory cifar_resnet8 --input 1x3x8x8 --top -1", "--top must be >= 1, got -1"),
    row("memory cifar_resnet8 --input 1x3x8x8 --dtype fp64", "--dtype: invalid choice"),
    row("memory ddpm_unet:ch=8 --input 1x3x28x28", "ddpm_unet", "needs H and W divisible by 8, got (28, 28)"),
    row("memory ddpm_unet:ch=7 --input 1x3x32x32", "ddpm_unet option ch must be an even integer >= 4, got 7"),
    row("memory ddpm_unet:ch=8:attn=4 --input 1x3x32x32", "attn names levels (0..3", "got 4"),
    row("memory ddpm_unet:ch=8:ch_mult=a --input 1x3x32x32", "ch_mult must be a list"),
    row("memory ddpm_unet:num_classes=10 --input 1x3x32x32", "ddpm_unet has no option 'num_classes'"),
    row("derive ddpm_unet:ch=8 --input 1x3x32x32 --factor 16", "factor 16 needs 4", "largest factor it can absorb is 8"),
    row("memory cifar_resnet8 --input 1x3x8x8 --convention peak", "--convention: invalid choice"),
    row("memory cifar_resnet8 --input 1x3x8x8 --json missing/r.json", "cannot write missing/r.json", "does not exist"),
    row("memory cifar_resnet8 --input 1x3x8x8 --json .", "cannot write .: it is a directory"),
    row("memory cifar_resnet8 --input 1x3x8x8 --plot missing/p.png", "cannot write missing/p.png"),
    row("memory cifar_resnet8 --input 1x3x8x8 --compare nosuchnet", "unknown model 'nosuchnet'"),
    row("memory fac.py:boom --input 1x3x8x8", "factory 'fac.py:boom' raised ValueError: bad width"),
    row("memory fac.py:needs --input 1x3x8x8", "factory 'fac.py:needs' raised TypeError"),
    row("memory missing.py:f", "model file not found: missing.py"),
    row("memory os:nosuch", "'os' has no attribute 'nosuch'"),
    row("memory latin.yaml --input 1x3x8x8", "model spec file latin.yaml"),
    row("memory RUN --input 1x1x8x8", "is a directory but not an export"),
    row("memory EXPORT --input 1x3x8x8", "the input has 3 channels", "expects 1"),
    row("memory EXPORT --input 1x2x8x8", "has in_channels=1, but 2 is needed"),
    row("memory cifar_resnet8 --input 1x3x1000000x1000000", "allocate"),
]

MODELS_ROWS = [
    row("models nosuch", "unknown model family 'nosuch'"),
    row("models cifar_resnet8 nosuch", "unknown model family 'nosuch'"),
]

DERIVE_ROWS = [
    row("derive cifar_resnet8 --input 1x3x32x32 --factor 3", "factor must be a power of two", "got 3"),
    row("derive cifar_resnet8 --input 1x3x32x32 --factor 0", "factor must be a power of two", "got 0"),
    row("derive cifar_resnet8 --input 1x3x32x32 --budget abc", "malformed size 'abc'"),
    row("derive cifar_resnet8 --input 1x3x32x32 --budget=-1KiB", "malformed size '-1KiB'"),
    row("derive cifar_resnet8 --input 1x3x32x32 --budget 1B", "no factor meets the budget"),
    row("derive cifar_resnet8 --input 1x3x32x32 --factor 2 --budget 1MB", "not allowed with argument"),
    row("derive cifar_resnet8 --factor 2", "the following arguments are required: --input"),
    row("derive cifar_resnet8 --input 1x3x32x32", "one of the arguments --factor --budget is required"),
    row("derive cifar_resnet8 --input 1x3x32x32 --factor 2 --drop nosuch", "'nosuch' is not a later stride slot"),
    row("derive cifar_resnet8 --input 1x3x32x32 --factor 2 --num-classes 0", "--num-classes must be >= 1, got 0"),
    row("derive cifar_resnet8 --input 1x3x32x32 --factor 2 --out missing/s.yaml", "cannot write missing/s.yaml"),
    row("derive cifar_resnet8 --input 1x3x32x32 --factor 2 --out .", "cannot write .: it is a directory"),
    row("derive cifar_resnet8 --input 1x3x32x32 --factor 2 --plot missing/p.png", "cannot write missing/p.png"),
    row("derive nosuchnet --input 1x3x32x32 --factor 2", "unknown model 'nosuchnet'"),
    row("derive cifar_resnet8 --input 1x3x0x32 --factor 2", "--input '1x3x0x32'"),
    row("derive fac.py:boom --input 1x3x32x32 --factor 2", "factory 'fac.py:boom' raised ValueError"),
    row("derive EXPORT --input 1x1x8x8 --factor 3", "power of two"),
]

LAYERS_ROWS = [
    row("layers nosuchnet cifar_resnet8 --input 1x3x32x32", "unknown model 'nosuchnet'"),
    row("layers cifar_resnet8 nosuchnet --input 1x3x32x32", "unknown model 'nosuchnet'"),
    row("layers cifar_resnet8 cifar_resnet8 --input 3x32", "--input '3x32'"),
    row("layers cifar_resnet8", "the following arguments are required: student"),
    row("layers fac.py:boom cifar_resnet8 --input 1x3x32x32", "factory 'fac.py:boom' raised"),
    # a 1-channel export against a 3-channel input: the forward fails inside torch
    row("layers EXPORT cifar_resnet8 --input 1x3x8x8", "channels"),
]

EVAL_ROWS = [
    row("eval missing", "no such run or export directory: missing"),
    row("eval .", "is neither a run directory (config.yaml) nor an export (spec.yaml)"),
    row("eval RUN --batch-size 0", "--batch-size must be >= 1, got 0"),
    row("eval RUN --batch-size -3", "--batch-size must be >= 1, got -3"),
    row("eval EXPORT --batch-size 0", "--batch-size must be >= 1, got 0"),
    row("eval RUN --device tpu", "--device must be auto, cpu, cuda or cuda:N", "'tpu'"),
    row("eval RUN --device cuda:99", "--device is cuda:99"),
    row("eval RUN --split train", "--split: invalid choice: 'train'"),
    row("eval RUN --batch-size many", "--batch-size: invalid int value"),
]

EXPORT_ROWS = [
    row("export missing", "missing is not a run directory (no config.yaml)"),
    row("export .", "is not a run directory (no config.yaml)"),
    row("export RUN --out RUN", "already exists and is not empty"),
    row("export RUN --checkpoint bogus", "--checkpoint: invalid choice: 'bogus'"),
    row("export RUN --out plain.txt/export", "plain.txt"),
]

SAMPLE_ROWS = [
    row("sample missing --out s", "no such run directory: missing"),
    row("sample . --out s", "is not a run directory (no config.yaml)"),
    row("sample RUN --out s", "is a classification run", "task: diffusion"),
    row("sample DRUN --out s", "names code to import", "--trust-code"),
    row("sample DRUN --out s --n 0", "--n must be >= 1, got 0"),
    row("sample DRUN --out s --batch-size 0", "--batch-size must be >= 1, got 0"),
    row("sample DRUN --out s --seed -1", "--seed must be >= 0, got -1"),
    row("--trust-code sample DRUN --out s --steps 5", "the DDPM sampler runs all 1000 steps", "--sampler ddim"),
    row("--trust-code sample DRUN --out s --sampler ddim --steps 0", "--steps must be in [1, 1000]"),
    row("--trust-code sample DRUN --out s --sampler ddim --steps 2000", "--steps must be in [1, 1000]", "got 2000"),
    row("--trust-code sample DRUN --out s --device tpu", "--device must be auto, cpu, cuda or cuda:N"),
    row("--trust-code sample DRUN --out RUN", "already exists and is not empty"),
    row("sample DRUN --out s --sampler euler", "--sampler: invalid choice: 'euler'"),
    row("sample DRUN", "the following arguments are required: --out"),
]

DEMO_ROWS = [
    row("demo --configs missing", "demo config directory not found: missing"),
    row("demo --configs . --out d", "demo config missing", "teacher.yaml"),
    row("demo --threads 0", "--threads must be >= 1, got 0"),
    row("demo optim.lr=-1 --out d", "'optim.lr' must be > 0, got -1.0"),
    row("demo data.subset=0 --out d", "'data.subset' must be >= 1 (or null), got 0"),
    row("demo optim.lrr=1 --out d", "unknown config key 'optim.lrr'"),
    row("demo --device tpu --out d", "run.device must be auto, cpu, cuda or cuda:N"),
    row("demo --data-root missing --out d run.epochs=1", "data set folder not found: missing"),
    row("demo --out plain.txt/demo run.epochs=1", "plain.txt"),
]

DEPLOY_ROWS = [
    row("deploy nockpt --out d", "has no finished checkpoint (best.pt or last.pt)"),
    row("deploy missing_run --out d", "unknown model 'missing_run'"),
    row("deploy cifar_resnet8 --out d", "has no recorded input shape; pass --input"),
    row("deploy bessel.py:make --input 1x3x8x8 --out d", "op 'prims.bessel_j0' in module '1'", "no ONNX translation"),
    row("deploy RUN --calib 100000 --out d", "--calib 100000 is larger than the training split (58 images)"),
    row("deploy RUN --calib 0 --out d", "--calib must be >= 1, got 0"),
    row("deploy RUN --out RUN", "exists; pass --overwrite"),
    row("deploy EXPORT --out plain.txt --overwrite", "cannot write plain.txt: it is a file"),
    row("deploy cifar_resnet8 --input 1x3x0x8 --out d", "--input '1x3x0x8'"),
]

FID_ROWS = [
    row("fid missing_dir", "no such sample file or folder: missing_dir"),
    row("fid emptydir", "sample folder emptydir holds neither samples.pt nor PNG files"),
    row("fid mixed", "mixed/b.png is 1x28x28 but a.png is 1x32x32", "one size only"),
    row("fid png28", "1 x 28 x 28 images", "need 1 x 32 x 32", "pad 28 px"),
    row("fid rgb32", "3 x 32 x 32 images", "need 1 x 32 x 32"),
    row("fid tensor3.pt", "tensor3.pt must hold one (N, C, H, W) image tensor, got shape (3,)"),
    row("fid plain.txt", "plain.txt is not a tensor file"),
    row("fid png32 --n 10", "--n 10 is more than the 4 samples available"),
    row("fid png32 --n 1", "--n must be >= 2"),
    row("fid png32 --k 0", "--k must be >= 1, got 0"),
    row("fid png32 --ref png28 --features feat.safetensors", "the reference images in png28", "1 x 28 x 28"),
    row("fid png32 --ref png32 --n 4 --features feat.safetensors --inception feat.safetensors", "not allowed with"),
    row("fid png32 --ref png32 --features missing.safetensors", "features file not found: missing.safetensors"),
    row("fid png32 --ref png32 --features plain.txt", "features file plain.txt is not a safetensors file"),
    row("fid png32 --ref png32 --features other.safetensors", "not a redistill Fashion-MNIST extractor"),
    row("fid png32 --ref png32 --features misfit.safetensors", "feature extractor weights in misfit.safetensors",
        "do not fit", "shape mismatch"),
    row("fid png32 --ref png32 --inception feat.safetensors", "inception-v3 weights in feat.safetensors do not fit",
        "missing keys"),
    row("fid png32 --ref png32 --inception plain.txt", "inception weights file plain.txt is not a readable state dict"),
    row("fid png32 --ref png32 --inception tensor3.pt", "is not a state dict"),
    row("fid png32 --out missing/r.json", "cannot write missing/r.json"),
    row("fid RUN", "has no samples/ folder", "redistill sample"),
    row("fid-extractor --epochs 0", "--epochs must be >= 1, got 0"),
    row("fid-extractor --out missing/f.safetensors", "cannot write missing/f.safetensors"),
]

PATCH_ROWS = [
    row("patch cifar_resnet8 --input 1x3x16x16 --split layer9 --grid 2", "'layer9' is not a module", "did you mean"),
    row("patch cifar_resnet8 --input 1x3x16x16 --split avgpool --grid 1", "cannot run patch-wise",
        "global pooling", "'avgpool'"),
    row("patch cifar_resnet8 --input 1x3x16x16 --split layer1 --grid 3", "grid 3 does not divide the 16x16",
        "use one of 1, 2, 4"),
    row("patch cifar_resnet8 --input 1x3x16x16 --split layer1.0.conv1 --grid 2", "is not a cut", "skip connection"),
    row("patch cifar_resnet8 --input 1x3x16x16 --split layer1", "give --split and --grid together"),
    row("patch cifar_resnet8 --input 1x3x16x16 --split layer1 --grid 2 --budget 1KiB", "not both"),
    row("patch cifar_resnet8 --input 1x3x16x16 --budget 1B --repeats 0", "no patch plan meets the budget", "no plan can go below"),
    row("patch cifar_resnet8 --input 1x3x16x16 --budget lots", "lots"),
    row("patch cifar_resnet8 --input 1x3x16x16 --split layer1 --grid 0", "--grid must be >= 1, got 0"),
    row("patch cifar_resnet8 --input 1x3x16x16 --dtype fp64", "--dtype: invalid choice"),
    row("patch cifar_resnet8 --input 1x3x16x16 --plot missing/p.png", "cannot write missing/p.png"),
    row("patch nosuchnet", "unknown model 'nosuchnet'"),
]

ROWS = (RANGE_ROWS + TRAIN_ROWS + MEMORY_ROWS + MODELS_ROWS + DERIVE_ROWS + LAYERS_ROWS + EVAL_ROWS + EXPORT_ROWS
        + SAMPLE_ROWS + DEMO_ROWS + DEPLOY_ROWS + FID_ROWS + PATCH_ROWS)


def _fid_files(root: Path) -> None:
    """Sample folders and feature files for the fid rows."""
    import json

    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from redistill.diffusion.features import FORMAT, FashionNet, save_fashion_net

    def pngs(folder: str, shapes: list[tuple[int, int, int]]) -> None:
        (root / folder).mkdir()
        for name, (c, h, w) in zip("abcd", shapes):
            Image.fromarray(torch.zeros(h, w, c, dtype=torch.uint8).squeeze(2).numpy()).save(root / folder / f"{name}.png")

    pngs("png32", [(1, 32, 32)] * 4)
    pngs("png28", [(1, 28, 28)] * 4)
    pngs("rgb32", [(3, 32, 32)] * 4)
    pngs("mixed", [(1, 32, 32), (1, 28, 28)])
    (root / "emptydir").mkdir()
    torch.save(torch.zeros(3), root / "tensor3.pt")
    save_fashion_net(FashionNet(width=4), root / "feat.safetensors", {"test_accuracy": 0.1})
    save_file({"x": torch.zeros(2)}, str(root / "other.safetensors"))
    meta = {"format": FORMAT, "architecture": "FashionNet", "config": json.dumps({"width": 8})}
    save_file(FashionNet(width=4).state_dict(), str(root / "misfit.safetensors"), metadata=meta)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny finished run and its export, shared by the rows that need one."""
    root = tmp_path_factory.mktemp("trained")
    (root / "tiny.yaml").write_text(TINY)
    run, export, drun = root / "run", root / "export", root / "drun"
    assert main(["train", str(root / "tiny.yaml"), "--out", str(run)]) == 0
    assert main(["export", str(run), "--out", str(export)]) == 0
    (root / "diffusion.yaml").write_text(DIFFUSION_TINY)
    assert main(["train", str(root / "diffusion.yaml"), "--out", str(drun)]) == 0
    return {"RUN": run, "EXPORT": export, "DRUN": drun}


@pytest.fixture
def scratch(tmp_path, monkeypatch, trained) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    for name, data in BINARY.items():
        (tmp_path / name).write_bytes(data)
    _fid_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _argv(cmd: str, trained: dict[str, Path]) -> list[str]:
    """``cmd`` split as a shell would, with ``RUN`` / ``EXPORT`` (alone or after ``=``) made paths."""
    argv = []
    for arg in shlex.split(cmd):
        key, eq, value = arg.rpartition("=")
        if arg in trained:
            arg = str(trained[arg])
        elif eq and value in trained:
            arg = f"{key}={trained[value]}"
        argv.append(arg)
    return argv


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        return exit_.code


@pytest.mark.parametrize("cmd, code, words", ROWS)
def test_bad_input_is_one_line(cmd, code, words, scratch, trained, capsys):
    capsys.readouterr()  # the shared run's output
    rc = _run(_argv(cmd, trained))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0]


def test_every_range_has_a_row():
    assert {key for key, *_ in BAD_VALUES} == set(RANGES)


def test_alias_bomb_fails_fast(scratch):
    """9**9 strings once expanded: refused before anything is expanded."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assert _run(["train", "bomb.yaml"]) == 2
    assert time.perf_counter() - start < 2.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100_000  # under 100 MB (the expanded document would be gigabytes)


def test_failed_rows_leave_no_runs_folder(scratch):
    # A config refused at load time must not have created runs/<name> (the default --out).
    assert _run(["train", "tiny.yaml", "optim.lr=-1"]) == 2
    assert not (scratch / "runs").exists()
