"""Shared machinery of the baseline :class:`DistillMethod` wrappers.

* :class:`StepCounter` counts training steps (for DKD/ReviewKD warm-up); the count is
  saved in the method's ``state_dict`` so a resumed run continues the ramp.
* :func:`fp32` runs a loss outside autocast: Gram matrices and ``exp`` overflow fp16.
* :func:`reached_parameters` finds the student parameters a feature loss can train, for
  the initialisation stages (FitNet hints, AB, FSP train the student *up to* the tapped
  layers, as in the papers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from redistill.distill.base import DistillMethod, PreStage
from redistill.distill.baselines.common import pair_layers
from redistill.distill.probe import probe_shapes
from redistill.distill.hooks import capture
from redistill.errors import UserError


@contextlib.contextmanager
def fp32(like: Tensor) -> Iterator[None]:
    """Disable autocast on ``like``'s device inside the block (losses are computed in fp32)."""
    with torch.autocast(like.device.type, enabled=False):
        yield


def as_fp32(feats: dict[str, Tensor]) -> dict[str, Tensor]:
    """The same features, cast to float32."""
    return {k: v.float() for k, v in feats.items()}


class StepCounter(nn.Module):
    """Counts training forwards; ``ramp(n)`` = min(steps / n, 1) (1 when n <= 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def tick(self) -> None:
        """Count one step when training with gradients (not validation passes)."""
        if self.training and torch.is_grad_enabled():
            self.steps += 1

    def ramp(self, warmup_steps: int) -> float:
        if warmup_steps <= 0:
            return 1.0
        return min(self.steps / warmup_steps, 1.0)

    def get_extra_state(self) -> dict:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict) -> None:
        self.steps = int(state["steps"])


def reached_parameters(student: nn.Module, refs: Sequence[str], example_input: Tensor) -> list[str]:
    """Names of the student parameters that the features ``refs`` depend on.

    One forward in eval mode (BN statistics untouched) and one ``autograd.grad``.
    """
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    was_training = student.training
    student.eval()
    try:
        with torch.enable_grad(), capture(student, list(refs), "student") as feats:
            student(example_input)
            total = sum(feats[r].float().sum() for r in refs)
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    finally:
        student.train(was_training)
    return [n for (n, _), g in zip(named, grads) if g is not None]


class LayerPairMethod(DistillMethod):
    """Base of methods that compare student and teacher features layer by layer.

    Args:
        student_layers: student refs to tap; default: its stage outputs (``feature_info``,
            stem excluded).
        teacher_layers: teacher refs paired with them; default: its stage outputs.
        weight: weight of each per-layer term.
        task_weight: weight of the cross-entropy.
    """

    def __init__(
        self,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        weight: float = 1.0,
        task_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self._layers_s = list(student_layers) if student_layers is not None else None
        self._layers_t = list(teacher_layers) if teacher_layers is not None else None
        self.weight = float(weight)
        self.task_weight = float(task_weight)
        self.layers_s: list[str] = []
        self.layers_t: list[str] = []

    def select_layers(self, student: nn.Module, teacher: nn.Module) -> tuple[list[str], list[str]]:
        """Layers used when the user gave none (override to pick a subset)."""
        return pair_layers(student, teacher, self._layers_s, self._layers_t)

    def setup(self, student: nn.Module, teacher: nn.Module, example_input: Tensor) -> nn.Module:
        self.layers_s, self.layers_t = self.select_layers(student, teacher)
        shapes_s = probe_shapes(student, self.layers_s, example_input)
        shapes_t = probe_shapes(teacher, self.layers_t, example_input)
        self.build([shapes_s[r] for r in self.layers_s], [shapes_t[r] for r in self.layers_t])
        return student

    def build(self, shapes_s: list[torch.Size], shapes_t: list[torch.Size]) -> None:
        """Create training-only modules from the feature shapes (none by default)."""

    def student_refs(self) -> list[str]:
        return list(self.layers_s)

    def teacher_refs(self) -> list[str]:
        return list(self.layers_t)

    def term_key(self, i: int) -> str:
        """Term name of pair ``i``: ``<method>/<student layer>``."""
        return f"{self.name}/{self.layers_s[i]}"

    def term_names(self) -> list[str]:
        return [self.term_key(i) for i in range(len(self.layers_s))]

    def feature_pairs(self, feats_s: dict[str, Tensor], feats_t: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Captured (student, teacher) features in layer order."""
        return [(feats_s[s], feats_t[t]) for s, t in zip(self.layers_s, self.layers_t)]


class InitStageMixin:
    """Adds an initialisation stage (AB, FSP, FitNet hints, FT paraphraser).

    Two ways to run it, chosen by the method's options:

    * ``init_steps > 0`` (inline): the first ``init_steps`` training steps of the normal
      run optimise the init terms (next to the cross-entropy), then the main terms take
      over. Works with any trainer and keeps the total training budget of every method
      equal.
    * ``init_epochs > 0``: :meth:`pre_stages` returns a :class:`PreStage` for trainers
      that run separate stages before the main one (init terms alone, only the init
      parameters trained, as in the papers).

    Subclasses call :meth:`init_stage_setup` in ``setup`` with the names of the student
    parameters the stage trains, and implement ``main_loss`` / ``init_loss`` (same
    arguments as ``forward``), ``init_modules`` and ``init_weights``.
    """

    init_epochs: int = 0
    init_steps: int = 0
    _init_student_params: Callable[[], list[nn.Parameter]] | None = None

    def init_stage_setup(self, student: nn.Module, param_names: Sequence[str]) -> None:
        names = set(param_names)

        def params() -> list[nn.Parameter]:
            return [p for n, p in student.named_parameters() if n in names]

        self._init_student_params = params

    def require_init_stage(self) -> None:
        """Refuse a configuration in which the method would teach nothing."""
        if self.init_steps <= 0 and self.init_epochs <= 0:
            raise UserError(
                f"'{self.name}' transfers knowledge in its initialisation stage; set the option "
                "init_steps (inline, first N training steps) or init_epochs (a separate pre-stage)"
            )

    def in_init_phase(self) -> bool:
        """True during the inline init steps (the step counter has already ticked)."""
        return self.counter.steps <= self.init_steps and self.init_steps > 0

    def forward(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        self.counter.tick()
        if self.in_init_phase():
            return self.init_loss(feats_s, feats_t, logits_s, logits_t, targets)
        return self.main_loss(feats_s, feats_t, logits_s, logits_t, targets)

    def main_loss(self, feats_s, feats_t, logits_s, logits_t, targets) -> dict[str, Tensor]:
        """Terms of the main stage (none for AB and FSP: their transfer is the init)."""
        return {}

    def term_weight(self, term_name: str) -> float:
        init = self.init_weights()
        if term_name in init:
            return init[term_name]
        return float(self.weight)

    def init_modules(self) -> list[nn.Module]:
        """Method submodules trained in the init stage."""
        return []

    def init_weights(self) -> dict[str, float]:
        return {}

    def pre_stages(self) -> list[PreStage]:
        if self.init_epochs <= 0:
            return []

        def parameters() -> list[nn.Parameter]:
            own = [p for m in self.init_modules() for p in m.parameters()]
            student = self._init_student_params() if self._init_student_params else []
            return [*student, *own]

        return [
            PreStage(
                name=f"{self.name}_init",
                epochs=int(self.init_epochs),
                parameters=parameters,
                loss=self.init_loss,
                weights=self.init_weights(),
            )
        ]
