"""The contract every distillation method follows, and the method registry.

A method observes named features of the student and the teacher (see
:mod:`redistill.distill.hooks`) and returns *unweighted* loss terms by name; the
:class:`~redistill.distill.distiller.Distiller` applies the weights in one place.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from redistill.errors import UserError, did_you_mean


@dataclass
class PreStage:
    """An extra training stage run before the main one (FitNet hints, FSP/AB/FT init).

    The trainer runs ``epochs`` epochs optimising ``parameters()`` on ``loss(...)``, which
    takes the same arguments as :meth:`DistillMethod.forward` and returns named terms;
    ``weights`` maps term names to their weights (missing names weigh 1).
    """

    name: str
    epochs: int
    parameters: Callable[[], list[nn.Parameter]]
    loss: Callable[..., dict[str, torch.Tensor]]
    weights: dict[str, float] = field(default_factory=dict)


class DistillMethod(nn.Module):
    """One distillation method.

    Subclasses set the class attribute ``name`` (done by :func:`register_method`),
    list the features they need in :meth:`student_refs` / :meth:`teacher_refs` and
    compute unweighted terms in :meth:`forward`. Training-only modules (regressors,
    embeddings) are submodules of the method, never of the student, so
    :meth:`deploy` can return the student untouched.
    """

    name: str = ""
    #: Weight of the cross-entropy ("ce") term.
    task_weight: float = 1.0
    #: Weight of every method term unless :meth:`term_weight` is overridden.
    weight: float = 1.0
    #: False for methods that never look at the teacher (skips its forward).
    uses_teacher: bool = True

    def student_refs(self) -> list[str]:
        """Student feature refs (``"layer"`` / ``"layer:in"``) to capture each step."""
        return []

    def teacher_refs(self) -> list[str]:
        """Teacher feature refs to capture each step (under ``no_grad``)."""
        return []

    def setup(self, student: nn.Module, teacher: nn.Module, example_input: torch.Tensor) -> nn.Module:
        """Prepare for training; called once, before the optimizer is built.

        Args:
            student: the student to train.
            teacher: the frozen teacher.
            example_input: one batch (or a single image batch) used to read feature shapes.
        Returns:
            The student to train: ``student`` itself or a modified one (RED surgery).
        """
        return student

    def forward(
        self,
        feats_s: dict[str, torch.Tensor],
        feats_t: dict[str, torch.Tensor],
        logits_s: torch.Tensor,
        logits_t: torch.Tensor | None,
        targets: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Unweighted loss terms by name (never ``"ce"``: the Distiller adds it).

        Args:
            feats_s: student features keyed by the refs of :meth:`student_refs`.
            feats_t: teacher features keyed by the refs of :meth:`teacher_refs`.
            logits_s: student logits (B, classes).
            logits_t: teacher logits, or None when there is no teacher.
            targets: class indices (B,) or soft targets (B, classes).
        Returns:
            ``{term_name: scalar tensor}``.
        """
        raise NotImplementedError

    def term_names(self) -> list[str]:
        """Names :meth:`forward` returns, when known before the first step (for logging)."""
        return []

    def term_weight(self, term_name: str) -> float:
        """Weight of the term called ``term_name`` in the total loss."""
        return float(self.weight)

    def deploy(self, student: nn.Module) -> nn.Module:
        """What ships after training; by default the student as it is."""
        return student

    def pre_stages(self) -> list[PreStage]:
        """Extra stages to run before the main training (none by default)."""
        return []

    # -- surgery that ships: how artifacts record it and rebuild it --------------------------

    @classmethod
    def surgery_of(cls, model: nn.Module) -> list | None:
        """This method's module surgery found in ``model``, as YAML-able data (None: none).

        Methods that change the deployed network (RED blocks) override this and
        :meth:`redo_surgery`; checkpoints and exports store the result under the method's name.
        """
        return None

    @classmethod
    def redo_surgery(cls, model: nn.Module, layout: list) -> nn.Module:
        """Redo the surgery that :meth:`surgery_of` described on a freshly built ``model``."""
        raise UserError(f"distillation method '{cls.name}' records no surgery, so there is none to redo")


_METHODS: dict[str, type[DistillMethod]] = {}


def register_method(name: str) -> Callable[[type[DistillMethod]], type[DistillMethod]]:
    """Class decorator adding a :class:`DistillMethod` to the registry under ``name``.

    Raises:
        ValueError: ``name`` is already registered (two methods must not share a name).
    """

    def add(cls: type[DistillMethod]) -> type[DistillMethod]:
        if name in _METHODS:
            raise ValueError(f"distillation method '{name}' is already registered by {_METHODS[name].__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, DistillMethod)):
            raise TypeError(f"register_method('{name}') expects a DistillMethod subclass, got {cls!r}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def list_methods() -> list[str]:
    """Names of all registered distillation methods, sorted."""
    return sorted(_METHODS)


def method_class(name: str) -> type[DistillMethod]:
    """The class registered as ``name``.

    Raises:
        UserError: unknown name; the message lists the registered names.
    """
    if name not in _METHODS:
        raise UserError(
            f"unknown distillation method '{name}'{did_you_mean(name, _METHODS)}; "
            f"known methods: {', '.join(sorted(_METHODS))}"
        )
    return _METHODS[name]


def create_method(name: str, **options) -> DistillMethod:
    """Build the method registered as ``name`` with its options.

    Args:
        name: registry name (``"red"``, ``"kd"``, ...).
        **options: constructor arguments of that method.
    Raises:
        UserError: unknown method name or unknown option (both with suggestions).
    """
    cls = method_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        valid = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
        for key in options:
            if key not in valid:
                raise UserError(
                    f"unknown option '{key}' for distillation method '{name}'{did_you_mean(key, valid)}; "
                    f"valid options: {', '.join(valid) or 'none'}"
                )
    return cls(**options)


def surgery_of(model: nn.Module) -> dict[str, list]:
    """Every registered method's surgery found in ``model``: ``{"red": [...]}``; empty for none."""
    found = {}
    for name in sorted(_METHODS):
        layout = _METHODS[name].surgery_of(model)
        if layout:
            found[name] = layout
    return found


def redo_surgery(model: nn.Module, surgery: dict[str, list], source: object = "artifact") -> nn.Module:
    """Redo what :func:`surgery_of` recorded, in place; returns ``model``.

    Raises:
        UserError: the record is not a mapping of method names to layouts, or names no method.
    """
    if not isinstance(surgery, dict):
        raise UserError(f"{source}: surgery must be a mapping of method name to layout, got {type(surgery).__name__}")
    for name, layout in surgery.items():
        if name not in _METHODS:
            raise UserError(f"{source}: surgery of unknown method '{name}'{did_you_mean(str(name), _METHODS)}")
        _METHODS[name].redo_surgery(model, layout)
    return model
