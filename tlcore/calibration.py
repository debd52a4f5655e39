"""Calibrated probabilities: temperature scaling, expected calibration error, reliability bins, rejection.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks") divides a trained classifier's logits by one scalar ``T > 0``
fitted on held-out data by minimising the negative log-likelihood. The
arg-max (and so accuracy) is unchanged; only the confidence moves. ``T`` is
fitted as ``log T`` with L-BFGS, so it stays positive without constraints.

The expected calibration error is Guo et al.'s top-label ECE: the top
probabilities are put into ``bins`` equal-width bins ``((m-1)/M, m/M]`` and
``ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|``.

Rejection ("none of the above"): an image whose top calibrated probability is
below a threshold ``P`` is answered ``unknown``; coverage is the share of
images answered, and accuracy is measured on those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tlcore.errors import ConfigError

ECE_BINS = 15  # Guo et al.'s choice
# log T is searched within [-LOG_T_LIMIT, LOG_T_LIMIT] (T in [0.01, 100]). A fit that ends at a bound has no
# finite optimum (a validation split the model separates perfectly drives T towards 0 without end): 1.0 is kept
LOG_T_LIMIT = math.log(100.0)
UNKNOWN = "unknown"  # the answer for an image whose top calibrated probability is below --reject-below


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (natural log) of ``labels`` [N] under ``softmax(logits / temperature)``.

    ``logits`` is float [N, C]; computed in float64.
    """
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


@dataclass
class TemperatureFit:
    """The outcome of :func:`temperature_fit`: the temperature, the NLL at 1 and at it, and why 1.0 was kept."""

    temperature: float
    nll_before: float  # mean NLL of softmax(logits)
    nll_after: float  # mean NLL of softmax(logits / temperature)
    images: int
    reason: str = ""  # set when no temperature was fitted and 1.0 is kept


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)`` on these held-out images.

    ``logits``: float [N, C] (any device; fitted on the CPU in float64),
    ``labels``: int [N] in ``[0, C)``. L-BFGS with a strong-Wolfe line
    search over ``log T``, starting at ``T = 1``, within [0.01, 100]. 1.0
    when there is no finite optimum (every image is classified right, so a
    lower T always lowers the NLL; or the search ends at a bound) or when the
    search ends above the NLL at 1. Raises ValueError for empty, mismatched
    or non-finite inputs.
    """
    return temperature_fit(logits, labels, max_iter).temperature


def temperature_fit(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> TemperatureFit:
    """:func:`fit_temperature` with the NLL before and after and, when 1.0 is kept, the reason."""
    logits = logits.detach().to("cpu", torch.float64)
    labels = labels.detach().to("cpu", torch.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(f"fit_temperature needs logits [N, C] and labels [N], N > 0; got {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("fit_temperature needs finite logits")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]})")
    before, count = nll(logits, labels), int(labels.numel())
    if bool((logits.argmax(dim=1) == labels).all()):
        # each image's NLL then only falls as T falls (its true logit is the largest): the infimum is at T -> 0
        return TemperatureFit(1.0, before, before, count, "no finite optimum: every validation image is predicted right")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.clamp(-LOG_T_LIMIT, LOG_T_LIMIT).exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    log_fitted = float(log_t.detach())
    if not math.isfinite(log_fitted) or abs(log_fitted) >= LOG_T_LIMIT - 1e-6:
        reason = f"no optimum within [{math.exp(-LOG_T_LIMIT):g}, {math.exp(LOG_T_LIMIT):g}]"
        return TemperatureFit(1.0, before, before, count, reason)
    fitted = math.exp(log_fitted)
    after = nll(logits, labels, fitted)
    if after > before:
        return TemperatureFit(1.0, before, before, count, "the fit did not lower the NLL")
    return TemperatureFit(fitted, before, after, count)


def check_temperature(value: object) -> float:
    """``value`` as a temperature: a finite number > 0 (not a bool); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"a temperature must be a finite number above 0, got {value!r}")
    return float(value)


class TemperatureScaled(nn.Module):
    """A classifier whose logits are divided by a fixed temperature: ``softmax`` of its output is calibrated.

    Input and output as the wrapped model's (``(N, C)`` logits, float32 out).
    The temperature is a buffer, so traced and exported graphs hold it.
    """

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(check_temperature(temperature), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).float() / self.temperature


@dataclass
class ReliabilityBins:
    """Top-label reliability over equal-width confidence bins ``((m-1)/M, m/M]``, m = 1..M.

    Per bin: ``counts`` (images), ``confidence`` (mean top probability) and
    ``accuracy`` (share correct); both are 0 for an empty bin.
    """

    edges: list[float]  # M + 1 bin edges from 0 to 1
    counts: list[int]
    confidence: list[float]
    accuracy: list[float]

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence| over the bins."""
        total = sum(self.counts)
        if total == 0:
            return 0.0
        return sum(n * abs(a - c) for n, a, c in zip(self.counts, self.accuracy, self.confidence, strict=True)) / total

    def to_dict(self) -> dict:
        """JSON-ready form (``tlcore eval --json``)."""
        return {**self.__dict__, "ece": self.ece}


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin the top probabilities ``confidence`` [N] (in [0, 1]) with ``correct`` [N] (bool) into ``bins`` bins.

    A confidence of exactly m/M falls in bin m (right-closed bins); 0 falls in the first.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    confidence = confidence.detach().to("cpu", torch.float64).flatten()
    correct = correct.detach().to("cpu").flatten().to(torch.float64)
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence and correct must have the same length, got {confidence.numel()} and {correct.numel()}")
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    confidence_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    safe = counts.clamp(min=1)
    return ReliabilityBins(
        edges=[m / bins for m in range(bins + 1)],
        counts=[int(n) for n in counts.tolist()],
        confidence=(confidence_sum / safe).tolist(),
        accuracy=(correct_sum / safe).tolist(),
    )


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Top-label ECE (Guo et al. 2017) of top probabilities ``confidence`` [N] and ``correct`` [N], in [0, 1]."""
    return reliability_bins(confidence, correct, bins).ece


def check_reject_below(value: object, name: str = "reject_below") -> float | None:
    """A rejection threshold: None (no rejection) or a number in [0, 1]; ConfigError naming ``name`` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:  # NaN fails too
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass
class Selective:
    """What answering only the images whose top probability reaches ``threshold`` gives."""

    threshold: float
    answered: int  # images whose top probability is >= threshold
    total: int
    correct: int  # answered images predicted right

    @property
    def coverage(self) -> float:
        """The share of images answered (1.0 with no images)."""
        return self.answered / self.total if self.total else 1.0

    @property
    def accuracy(self) -> float | None:
        """Accuracy on the answered images; None when none was answered."""
        return self.correct / self.answered if self.answered else None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        rejected = self.total - self.answered
        return {**self.__dict__, "coverage": self.coverage, "accuracy": self.accuracy, "rejected": rejected}


def selective(confidence: torch.Tensor, correct: torch.Tensor, threshold: float) -> Selective:
    """Answer the images whose ``confidence`` (top calibrated probability) is at least ``threshold``; reject the rest."""
    answered = confidence.detach().cpu() >= threshold
    right = correct.detach().cpu().bool()
    return Selective(float(threshold), int(answered.sum()), answered.numel(), int((answered & right).sum()))


def coverage_curve(confidence: torch.Tensor, correct: torch.Tensor, points: int = 101) -> list[Selective]:
    """:func:`selective` at ``points`` thresholds evenly spaced over [0, 1]: the coverage-accuracy trade-off."""
    return [selective(confidence, correct, i / (points - 1)) for i in range(points)]
