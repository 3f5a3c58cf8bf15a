"""Student + frozen teacher + distillation method, as one trainable module.

Each step returns the student outputs and the *unweighted* loss terms by name;
:meth:`Distiller.total_loss` is the one place where weights are applied (for the main run and
for a method's pre-stages alike), so every term can be logged as it is. The task's own loss
(cross-entropy for classification, the denoising loss for diffusion) comes from the task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from redistill.distill.base import DistillMethod, PreStage
from redistill.distill.hooks import capture
from redistill.errors import UserError


class Distiller(nn.Module):
    """Trains ``student``, optionally distilling from a frozen ``teacher``.

    Args:
        student: the network to train (after ``method.setup`` when there is a method).
        teacher: frozen teacher; needed when ``method`` uses one.
        method: a :class:`DistillMethod`, or None for plain training (the task term only).
        task_loss: ``task_loss(outputs, targets) -> scalar``, the task's loss (default:
            classification's cross-entropy).
        task_term: the name the task's term is logged under (default ``"ce"``).
        task_weight: weight of the task term; None takes ``method.task_weight``
            (1.0 without a method).
        example_input: when given, ``method.setup(student, teacher, example_input)`` is
            called here and its result becomes ``self.student``; leave it None when the
            caller already ran ``setup``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        method: DistillMethod | None = None,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        task_term: str = "ce",
        task_weight: float | None = None,
        example_input: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if method is not None and method.uses_teacher and teacher is None:
            raise UserError(f"distillation method '{method.name}' needs a teacher: set the teacher model in the config")
        if teacher is not None:
            # The authors' code let the teacher's BN statistics drift; freeze it for good.
            teacher.requires_grad_(False)
            teacher.eval()
        if method is not None and example_input is not None:
            student = method.setup(student, teacher, example_input)
        self.student = student
        self.teacher = teacher
        self.method = method
        if task_weight is None:
            task_weight = method.task_weight if method is not None else 1.0
        self.task_weight = float(task_weight)
        self.task_loss = task_loss
        self.task_term = task_term
        self._term_names: list[str] = []

    def train(self, mode: bool = True) -> Distiller:
        """Set train/eval mode on the student and method; the teacher stays in eval."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _run(self, inputs, refs_s: list[str]) -> tuple[torch.Tensor, dict, torch.Tensor | None, dict]:
        """Student (and, when the method needs it, teacher) forward with the features captured."""
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        method = self.method
        feats_t: dict[str, torch.Tensor] = {}
        out_t = None
        if method is not None and self.teacher is not None and method.uses_teacher:
            if self.teacher.training:  # someone called .train() on it directly; never learn BN stats
                self.teacher.eval()
            with torch.no_grad(), capture(self.teacher, method.teacher_refs(), "teacher") as seen:
                out_t = self.teacher(*args)
            feats_t = dict(seen)
        with capture(self.student, refs_s, "student") as seen:
            out_s = self.student(*args)
        return out_s, dict(seen), out_t, feats_t

    def forward(
        self, inputs, targets: torch.Tensor, stage: PreStage | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's forward.

        Args:
            inputs: the network input, (B, C, H, W), or a tuple of inputs (image, timestep).
            targets: what the task loss compares with (class indices (B,), soft targets
                (B, classes) for CutMix/MixUp, the noise for denoising).
            stage: a method pre-stage: its terms replace the task's and the method's.
        Returns:
            ``(student_outputs, terms)`` with unweighted terms; the task term is always there
            outside pre-stages.
        """
        method = self.method
        refs_s = method.student_refs() if method is not None else []
        out_s, feats_s, out_t, feats_t = self._run(inputs, refs_s)
        if stage is not None:
            return out_s, stage.loss(feats_s, feats_t, out_s, out_t, targets)
        terms = {self.task_term: self.task_loss(out_s, targets)}
        if method is not None:
            extra = method(feats_s, feats_t, out_s, out_t, targets)
            if self.task_term in extra:
                raise ValueError(f"method '{method.name}' returned a '{self.task_term}' term; the Distiller owns it")
            terms.update(extra)
        self._term_names = list(terms)
        return out_s, terms

    def weight_of(self, term_name: str, stage: PreStage | None = None) -> float:
        """Weight of one term in :meth:`total_loss` (of a pre-stage's terms with ``stage``)."""
        if stage is not None:
            return float(stage.weights.get(term_name, 1.0))
        if term_name == self.task_term:
            return self.task_weight
        if self.method is None:
            raise KeyError(f"unknown loss term '{term_name}' (no distillation method)")
        return float(self.method.term_weight(term_name))

    def total_loss(self, terms: dict[str, torch.Tensor], stage: PreStage | None = None) -> torch.Tensor:
        """``task_weight * task + sum_n method.term_weight(n) * terms[n]``: the only weighting.

        With ``stage``, the stage's terms weighted by ``stage.weights`` (missing names weigh 1).
        """
        return sum(self.weight_of(name, stage) * value for name, value in terms.items())

    def weights(self, names: Iterable[str] | None = None) -> dict[str, float]:
        """Weight of each term (for logging).

        Args:
            names: term names; default: those of the last forward, else ``"ce"`` plus
                ``method.term_names()``.
        """
        if names is None:
            names = self._term_names or [self.task_term, *(self.method.term_names() if self.method is not None else [])]
        return {name: self.weight_of(name) for name in names}

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer updates: the student's and the method's (never the teacher's)."""
        yield from (p for p in self.student.parameters() if p.requires_grad)
        if self.method is not None:
            yield from (p for p in self.method.parameters() if p.requires_grad)

    def deployed_student(self) -> nn.Module:
        """The network that ships: ``method.deploy(student)`` (RED blocks stay in)."""
        if self.method is None:
            return self.student
        return self.method.deploy(self.student)
