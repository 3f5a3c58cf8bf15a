"""Student + frozen teacher + distillation method, as one trainable module.

Each step returns the student logits and the *unweighted* loss terms by name;
:meth:`Distiller.total_loss` is the one place where weights are applied, so every
term can be logged as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from redistill.distill.base import DistillMethod
from redistill.distill.hooks import capture
from redistill.errors import UserError


class Distiller(nn.Module):
    """Trains ``student``, optionally distilling from a frozen ``teacher``.

    Args:
        student: the network to train (after ``method.setup`` when there is a method).
        teacher: frozen teacher; needed when ``method`` uses one.
        method: a :class:`DistillMethod`, or None for plain training ("ce" only).
        task_weight: weight of the cross-entropy term; None takes ``method.task_weight``
            (1.0 without a method).
        label_smoothing: passed to the cross-entropy.
        example_input: when given, ``method.setup(student, teacher, example_input)`` is
            called here and its result becomes ``self.student``; leave it None when the
            caller already ran ``setup``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        method: DistillMethod | None = None,
        task_weight: float | None = None,
        label_smoothing: float = 0.0,
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
        self.label_smoothing = float(label_smoothing)
        self._term_names: list[str] = []

    def train(self, mode: bool = True) -> Distiller:
        """Set train/eval mode on the student and method; the teacher stays in eval."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's forward.

        Args:
            images: (B, C, H, W).
            targets: class indices (B,) or soft targets (B, classes) (CutMix/MixUp).
        Returns:
            ``(student_logits, terms)`` with unweighted terms, always including ``"ce"``.
        """
        method = self.method
        feats_t: dict[str, torch.Tensor] = {}
        logits_t = None
        if method is not None and self.teacher is not None and method.uses_teacher:
            if self.teacher.training:  # someone called .train() on it directly; never learn BN stats
                self.teacher.eval()
            with torch.no_grad(), capture(self.teacher, method.teacher_refs(), "teacher") as seen:
                logits_t = self.teacher(images)
            feats_t = dict(seen)
        refs_s = method.student_refs() if method is not None else []
        with capture(self.student, refs_s, "student") as seen:
            logits_s = self.student(images)
        feats_s = dict(seen)

        terms = {"ce": F.cross_entropy(logits_s, targets, label_smoothing=self.label_smoothing)}
        if method is not None:
            extra = method(feats_s, feats_t, logits_s, logits_t, targets)
            if "ce" in extra:
                raise ValueError(f"method '{method.name}' returned a 'ce' term; the Distiller owns it")
            terms.update(extra)
        self._term_names = list(terms)
        return logits_s, terms

    def weight_of(self, term_name: str) -> float:
        """Weight of one term in :meth:`total_loss`."""
        if term_name == "ce":
            return self.task_weight
        if self.method is None:
            raise KeyError(f"unknown loss term '{term_name}' (no distillation method)")
        return float(self.method.term_weight(term_name))

    def total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """``task_weight * ce + sum_n method.term_weight(n) * terms[n]``: the only weighting."""
        return sum(self.weight_of(name) * value for name, value in terms.items())

    def weights(self, names: Iterable[str] | None = None) -> dict[str, float]:
        """Weight of each term (for logging).

        Args:
            names: term names; default: those of the last forward, else ``"ce"`` plus
                ``method.term_names()``.
        """
        if names is None:
            names = self._term_names or ["ce", *(self.method.term_names() if self.method is not None else [])]
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
