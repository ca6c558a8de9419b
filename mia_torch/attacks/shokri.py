"""Shadow-model attack of Shokri et al. (2017), "Membership Inference Attacks against Machine Learning Models".

Attack networks learn IN/OUT from the reference (shadow) models' outputs, with IN/OUT
targets taken from the reference keep rows. Features of an (model, example) pair: the
softmax probability vector averaged over the Q queries, sorted in descending order
(optionally truncated to its ``top_k`` largest entries) and standardised with the
training rows' mean and spread. With ``features="logit"`` (default) each probability
enters on the log-odds scale ``log(p / (1 - p))``, an order-preserving transform computed
exactly from the logits: a confident model's probabilities round to 1 and 0 and, once
standardised, the differences between them vanish, while their log-odds stay spread
out (the scaling LiRA applies to p_y). ``features="probability"`` uses the
probabilities themselves, as in the paper. The true label enters through ``mode``:

* ``per_class`` — one MLP per class, as in the paper;
* ``label_input`` — one MLP with the one-hot label appended to the features.

Each MLP has one hidden ReLU layer. Training is full batch with Adam for a fixed number
of epochs, IN and OUT rows weighted to equal total weight within each class (or overall),
from a seeded initialisation, so it is deterministic on CPU. The per-class networks are
trained together as one batched network (``torch.baddbmm`` over a padded per-class
layout); Adam acts element-wise, so this is the same as training them one by one.
When there are more than ``max_train_rows`` (model, example) rows, a seeded random
subset is used. The networks are trained anew for every set of references: their fit is
no sum over reference models.

The score is the attack network's member logit (higher = member; logits keep the ranking
at the top resolvable where probabilities would round to 1). ``threshold`` is 0, the
balanced decision of a network trained on IN/OUT-balanced data. Classes never seen in
training score 0.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from mia_torch.attacks.base import check_choice, check_number, check_target
from mia_torch.attacks.feature_attack import FeatureAttack, Knobs, ReferenceFeatures
from mia_torch.signals.features import Feature, sorted_probability_feature

__all__ = ["ShokriAttack"]


def _group_layout(groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Position of every row in a padded ``[G, M]`` layout: (group, slot, M)."""
    counts = torch.bincount(groups, minlength=num_groups)
    order = torch.argsort(groups, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(groups)
    slot[order] = torch.arange(groups.numel(), device=groups.device) - starts[groups[order]]
    width = int(counts.max()) if groups.numel() else 0
    return groups, slot, max(width, 1)


class ShokriAttack(FeatureAttack):
    """Shokri et al. attack network(s) trained on reference-model outputs.

    Args:
        mode: ``per_class`` (one MLP per class; default) or ``label_input``.
        top_k: keep the k largest sorted probabilities (None = all C).
        hidden: hidden units of each MLP (default 64).
        epochs: full-batch Adam steps (default 100).
        lr: Adam learning rate (default 0.01).
        weight_decay: L2 penalty (default 1e-4).
        max_train_rows: cap on (model, example) training rows; None = all.
        seed: seed for initialisation and row subsampling.
        features: ``logit`` (sorted log-odds of the probabilities; default) or
            ``probability`` (sorted probabilities, as in the paper).
    """

    requires_references = True
    threshold: float | None = 0.0

    def __init__(
        self,
        mode: str = "per_class",
        top_k: int | None = None,
        hidden: int = 64,
        epochs: int = 100,
        lr: float = 0.01,
        *,
        weight_decay: float = 1e-4,
        max_train_rows: int | None = 100_000,
        seed: int = 0,
        features: str = "logit",
    ) -> None:
        self.mode = check_choice("mode", mode, ("per_class", "label_input"))
        self.features = check_choice("features", features, ("logit", "probability"))
        self.top_k = None if top_k is None else int(check_number("top_k", top_k, low=1, integer=True))
        self.hidden = int(check_number("hidden", hidden, low=1, integer=True))
        self.epochs = int(check_number("epochs", epochs, low=1, integer=True))
        self.lr = float(check_number("lr", lr, low=0.0, low_open=True))
        self.weight_decay = float(check_number("weight_decay", weight_decay, low=0.0))
        self.max_train_rows = (
            None if max_train_rows is None else int(check_number("max_train_rows", max_train_rows, low=2, integer=True))
        )
        self.seed = int(check_number("seed", seed, integer=True))
        self.threshold = 0.0
        self._net: dict[str, torch.Tensor] | None = None

    # ----------------------------------------------------------------- features
    def required_features(self) -> tuple[Feature, ...]:
        """The sorted, query-averaged probability vector (log-odds or probabilities), cut to ``top_k``."""
        return (sorted_probability_feature(self.features, self.top_k),)

    @property
    def calibrates(self) -> bool:
        """Nothing is chosen on the references besides the network (the threshold is 0)."""
        return False

    def _standardised(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Standardised network inputs ``[M, F]`` for feature rows ``probs [M, K]`` with labels ``[M]``."""
        x = ((probs - self._mean) / self._std).float()
        if self.mode == "label_input":
            x = torch.cat([x, F.one_hot(labels, self._num_classes).to(x.dtype)], dim=1)
        return x

    # ---------------------------------------------------------------- network
    def _init_net(self, num_groups: int, in_features: int, device: torch.device) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            return ((torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound).to(device).requires_grad_(True)

        g, f, h = num_groups, in_features, self.hidden
        return {
            "w1": uniform((g, f, h), f),
            "b1": uniform((g, 1, h), f),
            "w2": uniform((g, h, 1), h),
            "b2": uniform((g, 1, 1), h),
        }

    @staticmethod
    def _forward(net: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Batched MLP: ``x [G, M, F]`` -> member logits ``[G, M]``."""
        hidden = torch.relu(torch.baddbmm(net["b1"], x, net["w1"]))
        return torch.baddbmm(net["b2"], hidden, net["w2"]).squeeze(-1)

    def _groups(self, labels: torch.Tensor) -> torch.Tensor:
        return labels if self.mode == "per_class" else torch.zeros_like(labels)

    # --------------------------------------------------------------------- API
    def fit_features(self, ref: ReferenceFeatures, *, knobs: Knobs | None = None) -> ShokriAttack:
        """Train the attack network(s) on the reference models' features and keep rows (nothing in ``knobs``)."""
        ref = self._check_features(ref)
        name = self.required_features()[0].name
        device = ref.keep.device
        r, n = ref.num_models, ref.num_examples
        self._num_classes = ref.num_classes
        self._num_examples = n
        if self.max_train_rows is not None and r * n > self.max_train_rows:
            gen = torch.Generator().manual_seed(self.seed + 1)
            rows = torch.randperm(r * n, generator=gen)[: self.max_train_rows].to(device)
            model, example = torch.div(rows, n, rounding_mode="floor"), rows % n
            probs, labels = ref.take_entries(name, model, example).double(), ref.labels[example]
            target = ref.keep_of()[model, example]
        else:
            probs = ref.take(name).double().reshape(r * n, -1)  # [R*N, K]
            labels = ref.labels[None, :].expand(r, n).reshape(-1)
            target = ref.keep_of().reshape(-1)
        self._mean = probs.mean(0)
        self._std = probs.std(0, unbiased=False).clamp(min=1e-6)
        x = self._standardised(probs, labels)

        num_groups = self._num_classes if self.mode == "per_class" else 1
        groups = self._groups(labels)
        g_idx, slot, width = _group_layout(groups, num_groups)
        xp = x.new_zeros(num_groups, width, x.shape[1])
        xp[g_idx, slot] = x
        yp = x.new_zeros(num_groups, width)
        yp[g_idx, slot] = target.to(x.dtype)
        # Row weights: IN and OUT get half of each group's weight each (a group lacking one
        # of them spreads its weight over the rows it has); padding gets weight 0.
        n_in = torch.bincount(groups[target], minlength=num_groups).to(x.dtype)
        n_out = torch.bincount(groups[~target], minlength=num_groups).to(x.dtype)
        both = (n_in > 0) & (n_out > 0)
        w_in = torch.where(both, 0.5 / n_in.clamp(min=1.0), 1.0 / (n_in + n_out).clamp(min=1.0))
        w_out = torch.where(both, 0.5 / n_out.clamp(min=1.0), 1.0 / (n_in + n_out).clamp(min=1.0))
        wp = x.new_zeros(num_groups, width)
        wp[g_idx, slot] = torch.where(target, w_in[groups], w_out[groups])

        net = self._init_net(num_groups, x.shape[1], device)
        opt = torch.optim.Adam(net.values(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad(set_to_none=True)
            loss = (F.binary_cross_entropy_with_logits(self._forward(net, xp), yp, reduction="none") * wp).sum()
            loss.backward()
            opt.step()
        self._net = {k: v.detach() for k, v in net.items()}
        self._trained = (n_in + n_out) > 0  # [G]
        return self

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target member logits, float64 ``[N]``, higher = member."""
        if self._net is None:
            raise RuntimeError("ShokriAttack.score called before fit")
        logits, labels = check_target(logits, labels)
        if logits.shape[-1] != self._num_classes:
            raise ValueError(f"target has C = {logits.shape[-1]} classes, the references had {self._num_classes}")
        return super().score(logits, labels)

    def score_features(self, target: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Target member logits from its features, float64 ``[N]``, higher = member."""
        if self._net is None:
            raise RuntimeError("ShokriAttack.score called before fit")
        probs = target[self.required_features()[0].name].double()
        device = probs.device
        labels = labels.to(device)
        net = {k: v.to(device) for k, v in self._net.items()}
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        x = self._standardised(probs, labels)
        num_groups = net["w1"].shape[0]
        groups = self._groups(labels)
        g_idx, slot, width = _group_layout(groups, num_groups)
        xp = x.new_zeros(num_groups, width, x.shape[1])
        xp[g_idx, slot] = x
        with torch.no_grad():
            out = self._forward(net, xp)[g_idx, slot]
        out = torch.where(self._trained.to(device)[groups], out, torch.zeros_like(out))
        return out.double()
