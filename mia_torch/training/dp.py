"""DP-SGD through Opacus: ``defense=dpsgd`` (:class:`DPSGD`) and its private trainer.

DP-SGD (Abadi et al. 2016) clips every example's gradient to L2 norm ``max_grad_norm``,
sums the clipped gradients of a Poisson-sampled batch (each member joins each step
independently with probability ``q``), adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` and divides by the expected batch size. The model is
then (epsilon, delta)-differentially private with respect to its training records: for
any record, the distribution of trained models with and without it differ by at most a
factor ``e^epsilon`` except with probability ``delta``, which bounds every membership
inference attack's TPR by ``e^epsilon * FPR + delta``.

:func:`train_private` does this with Opacus' own parts: :class:`opacus.GradSampleModule`
(per-example gradients), :class:`opacus.optimizers.DPOptimizer` (clipping and noise) and
an Opacus accountant (``rdp`` by default), as :class:`opacus.PrivacyEngine` assembles
them, but with the data resident on the device and Poisson sampling drawn from the
model's seeded generator (so a run is reproducible). The noise multiplier is the
smallest one whose accounted epsilon after all ``train.epochs`` reaches the target
``defense.epsilon`` (:func:`opacus.accountants.utils.get_noise_multiplier`); the epsilon
actually spent (:meth:`accountant.get_epsilon`) is recorded per model.

Interplay with the other training options:

- crop, flip and cutout act on one example at a time: allowed (the accounting is per
  example, whatever is done to it); mixup mixes examples and is refused.
- BatchNorm mixes examples through batch statistics: models are made compatible with
  :func:`make_private_compatible` (Opacus' ``ModuleValidator.fix``: GroupNorm in place of
  BatchNorm), identically when a DP-trained model is rebuilt to load its weights.
- early stopping: the noise is calibrated for the full ``train.epochs``; the recorded
  ``dp_epsilon`` is the privacy spent by the steps actually taken (the restored best
  epoch is chosen from the iterates up to the stopping epoch and the validation records,
  which are not trained on, so selecting it is post-processing for the training records;
  the validation records themselves are not protected). ``dp_epsilon_target`` is the
  configured budget.
- ``defense.epsilon: inf`` clips without noise (the ``dp_epsilon`` recorded is infinite,
  ``null`` in ``results.json``).
- The private path always trains one model at a time (no vmap) in float32 (no autocast,
  no channels_last) and reads each Poisson batch's size on the host once per step.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mia_torch.settings.checks import check_values
from mia_torch.data.augment import augment_batch, draw_augment
from mia_torch.training.config import TrainConfig
from mia_torch.training.defense import Defense
from mia_torch.training.trainer import (
    TrainResult,
    early_stopping_for,
    end_of_epoch,
    final_metrics,
    make_optimizer,
    make_scheduler,
)

__all__ = ["DPSGD", "make_private_compatible", "noise_multiplier", "private_sample_rate", "train_private"]

ACCOUNTANTS = ("rdp", "prv", "gdp")


def _require_opacus() -> None:
    try:
        import opacus  # noqa: F401
    except ImportError as err:  # pragma: no cover - the dp extra is installed by scripts/setup.sh
        raise ValueError("defense=dpsgd needs Opacus: pip install 'mia-torch[dp]' (or pip install opacus)") from err


@dataclass(frozen=True, kw_only=True)
class DPSGD(Defense):
    """``defense=dpsgd``: DP-SGD through Opacus with its settings (see the module docstring)."""

    name: str | None = "dpsgd"
    epsilon: float = 8.0  # target epsilon after train.epochs; inf = clipping without noise
    delta: float | None = None  # None = 1 / population
    max_grad_norm: float = 1.0  # per-example gradient clipping norm
    poisson_sampling: bool = True  # False: shuffled fixed-size batches (accounted as if Poisson, as Opacus does)
    accountant: str = "rdp"  # rdp | prv | gdp (Opacus accountants)

    def __post_init__(self) -> None:
        super().__post_init__()

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)

        check_values(self, "defense", [
            (number(self.epsilon) and self.epsilon > 0, "epsilon", "a number > 0 (inf = clipping without noise)"),
            (self.delta is None or (number(self.delta) and 0 < self.delta < 1), "delta",
             "null (1 / population) or a number in (0, 1)"),
            (number(self.max_grad_norm) and 0 < self.max_grad_norm < math.inf, "max_grad_norm", "a finite number > 0"),
            (isinstance(self.poisson_sampling, bool), "poisson_sampling", "true or false"),
            (self.accountant in ACCOUNTANTS, "accountant", f"one of {ACCOUNTANTS}"),
        ])
        _require_opacus()

    def delta_for(self, population: int) -> float:
        """The delta used: ``defense.delta``, or 1 / population."""
        return self.delta if self.delta is not None else 1.0 / population

    def key(self, population: int) -> dict[str, Any]:
        """What determines a DP-trained model (for store keys): every setting, delta resolved, but not
        ``apply_to``, which only says which models are DP-trained."""
        values = asdict(self)
        values.pop("apply_to")
        return values | {"delta": self.delta_for(population)}

    def check_training(self, train: TrainConfig) -> None:
        """Refuse training options that break DP-SGD's per-example accounting."""
        if train.augment.mixes:
            raise ValueError(
                f"train.augment.mixup_alpha={train.augment.mixup_alpha} mixes examples, which DP-SGD's per-example "
                "clipping does not account for: set train.augment.mixup_alpha=0 with defense=dpsgd")

    def adapt(self, model: nn.Module) -> nn.Module:
        """``model`` made DP-compatible (:func:`make_private_compatible`)."""
        return make_private_compatible(model)

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, member_idx: torch.Tensor, cfg: TrainConfig,
              *, seed: int, val_idx: torch.Tensor | None = None, x_test: torch.Tensor | None = None,
              y_test: torch.Tensor | None = None, step_hooks: Sequence[Callable[[Any], None]] = ()) -> TrainResult:
        """:func:`train_private` at ``delta_for`` the population ``len(y)`` (``step_hooks``: see there)."""
        return train_private(model, x, y, member_idx, cfg, self, seed=seed, delta=self.delta_for(len(y)),
                             val_idx=val_idx, x_test=x_test, y_test=y_test, step_hooks=step_hooks)


def make_private_compatible(model: nn.Module) -> nn.Module:
    """``model`` ready for per-example gradients: BatchNorm replaced by GroupNorm (Opacus' fixer).

    Also turns off in-place activations (Opacus' backward hooks cannot follow them; the
    outputs are the same). Deterministic, so a model rebuilt to load DP-trained weights
    gets the same layers. Raises ``ValueError`` naming the first module Opacus cannot train.
    """
    _require_opacus()
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(model.train())
    for module in fixed.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    for name, module in fixed.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = validator(module) if validator is not None else []
        if errors:
            raise ValueError(f"model module `{name}` ({type(module).__name__}) cannot be trained with "
                             f"defense=dpsgd: {errors[0]}; pick another model or model.norm")
    return fixed


def private_sample_rate(num_members: int, batch_size: int) -> float:
    """Poisson sample rate of DP-SGD: ``1 / round(num_members / batch_size)`` (one epoch's steps, at least 1)."""
    return 1.0 / max(1, round(num_members / batch_size))


@functools.lru_cache(maxsize=64)
def noise_multiplier(
    epsilon: float, *, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The noise multiplier whose accounted epsilon after ``steps`` steps at ``sample_rate`` is ``epsilon``.

    Opacus' :func:`~opacus.accountants.utils.get_noise_multiplier` (binary search to within
    0.01 of ``epsilon``, on the safe side); 0 for ``epsilon = inf``. Cached: the models of a
    study share their calibration (a search takes about a second).
    """
    if math.isinf(epsilon):
        return 0.0
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant))
    except ValueError as err:
        raise ValueError(f"defense.epsilon={epsilon} cannot be reached with delta={delta:g}, sample rate "
                         f"{sample_rate:.3g} and {steps} steps ({err}): raise defense.epsilon") from err


@functools.lru_cache(maxsize=256)
def _spent(history: tuple[tuple[float, float, int], ...], delta: float, mechanism: str) -> float:
    """Epsilon at ``delta`` of a composition ``(noise multiplier, sample rate, steps), ...`` (cached: models
    of a study usually share it, and an accounting takes up to a second)."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=mechanism)
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def _batches(member_idx: torch.Tensor, *, steps: int, sample_rate: float, poisson: bool,
             generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's batches: Poisson samples of the members, or near-equal splits of a permutation."""
    n = len(member_idx)
    if poisson:
        return [member_idx[torch.rand(n, generator=generator, device=member_idx.device) < sample_rate]
                for _ in range(steps)]
    order = member_idx[torch.randperm(n, generator=generator, device=member_idx.device)]
    return list(torch.tensor_split(order, steps))


def _epoch(
    private: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of DP-SGD steps; returns the summed loss and the number of correct predictions."""
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        if len(batch) == 0:  # Poisson sampling drew nobody: a noise-only step, as Opacus takes
            for p in private.parameters():
                if p.requires_grad:
                    p.grad_sample = p.new_zeros((0, *p.shape))
        else:
            draws = draw_augment(len(batch), cfg.augment, image_size=tuple(x.shape[2:]), generator=generator,
                                 device=x.device)
            out = private(augment_batch(x[batch], draws, cfg.augment))
            loss = F.cross_entropy(out, y[batch], label_smoothing=cfg.label_smoothing)
            loss.backward()
            loss_sum += loss.detach() * len(batch)
            correct += (out.detach().argmax(1) == y[batch]).sum()
        optimizer.step()
        scheduler.step()
    return loss_sum, correct


def train_private(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    member_idx: torch.Tensor,
    cfg: TrainConfig,
    defense: DPSGD,
    *,
    seed: int,
    delta: float,
    val_idx: torch.Tensor | None = None,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    step_hooks: Sequence[Callable[[Any], None]] = (),
) -> TrainResult:
    """Train ``model`` (made compatible by :func:`make_private_compatible`) in place with DP-SGD.

    As :func:`~mia_torch.training.trainer.train_model` (optimizer, schedule, label
    smoothing, crop/flip/cutout, early stopping), with per-example clipping and noise.
    ``train.epochs * round(n / train.batch_size)`` steps at sample rate ``1 / steps per
    epoch``. Metrics add ``dp_epsilon`` (spent, at ``delta``), ``dp_epsilon_target``,
    ``dp_delta``, ``dp_noise_multiplier``, ``dp_max_grad_norm``, ``dp_sample_rate`` and
    ``dp_steps`` (taken). ``step_hooks`` run after each step's clipping, noise and scaling,
    before the update, with the DP optimizer (Opacus' step hook; e.g. gradient canaries,
    :mod:`mia_torch.training.canary_gradients`).
    """
    _require_opacus()
    from opacus import GradSampleModule
    from opacus.accountants import create_accountant
    from opacus.optimizers import DPOptimizer

    device = x.device
    n = len(member_idx)
    if n == 0:
        raise ValueError("a model has no training examples: the population is too small for the split")
    stopper = early_stopping_for(cfg, val_idx)
    defense.check_training(cfg)
    sample_rate = private_sample_rate(n, cfg.batch_size)
    steps_per_epoch = round(1.0 / sample_rate)
    sigma = noise_multiplier(defense.epsilon, delta=delta, sample_rate=sample_rate,
                             steps=cfg.epochs * steps_per_epoch, accountant=defense.accountant)
    model.to(device).train()
    generator = torch.Generator(device=device).manual_seed(seed)
    private = GradSampleModule(model)
    optimizer = DPOptimizer(make_optimizer(private, cfg, device), noise_multiplier=sigma,
                            max_grad_norm=defense.max_grad_norm, expected_batch_size=max(1, round(n * sample_rate)),
                            generator=generator)
    accountant = create_accountant(mechanism=defense.accountant)
    hooks = [accountant.get_optimizer_hook_fn(sample_rate=sample_rate), *step_hooks]
    optimizer.attach_step_hook(lambda opt: [hook(opt) for hook in hooks])
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    member_idx = member_idx.to(device)
    epoch_loss, epoch_acc = [], []
    with warnings.catch_warnings():  # Opacus hooks the first layer, whose input needs no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(cfg.epochs):
            batches = _batches(member_idx, steps=steps_per_epoch, sample_rate=sample_rate,
                               poisson=defense.poisson_sampling, generator=generator)
            loss_sum, correct = _epoch(private, optimizer, scheduler, batches, x, y, cfg, generator=generator)
            epoch_loss.append(loss_sum / n)
            epoch_acc.append(correct / n)
            if end_of_epoch(stopper, model, x, y, val_idx, cfg):
                break
    private._close()  # remove Opacus' hooks and per-example gradient attributes from the model
    steps = sum(count for _, _, count in accountant.history)
    spent = _spent(tuple(map(tuple, accountant.history)), delta, defense.accountant) if sigma > 0 else math.inf
    metrics = final_metrics(model, x, y, member_idx, cfg, epoch_loss=torch.stack(epoch_loss).tolist(),
                            epoch_acc=torch.stack(epoch_acc).tolist(), stopper=stopper, x_test=x_test, y_test=y_test)
    metrics |= {
        "dp_epsilon": spent,
        "dp_epsilon_target": float(defense.epsilon),
        "dp_delta": float(delta),
        "dp_noise_multiplier": sigma,
        "dp_max_grad_norm": float(defense.max_grad_norm),
        "dp_sample_rate": sample_rate,
        "dp_steps": int(steps),
    }
    return TrainResult(metrics=metrics)
