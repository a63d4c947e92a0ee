"""A small real fraud classifier for the demo: synthetic card transactions and logistic regression.

The demo's model versions must make real predictions whose accuracy the load generator can judge
against late ground-truth labels, so that an accuracy metric in a policy measures something. The
data come from a hidden non-linear rule plus noise (about 12 % fraud); the model is a logistic
regression on standardised, lightly engineered features, trained by batch gradient descent in
numpy (well under a second). :func:`train_degraded` makes the "bad canary": the same model trained
on a label join that wrongly counted a share of legitimate transactions as fraud, which moves its
decision boundary and costs it 10 to 15 points of accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

#: The raw features of one transaction, in column order.
FEATURES = (
    "amount",  # in currency units, log-normal
    "hour",  # hour of day, 0..24
    "distance_km",  # from the card holder's home
    "merchant_risk",  # the merchant category's risk score, 0..1
    "card_age_days",
    "foreign",  # 1 if the merchant is abroad
    "velocity",  # transactions on the card in the last hour
    "card_present",  # 1 for chip/contactless, 0 for online
)
N_FEATURES = len(FEATURES)


def generate(rng: np.random.Generator, n: int) -> tuple[Array, Array]:
    """``n`` synthetic transactions (``n`` x 8, columns :data:`FEATURES`) and their 0/1 fraud labels."""
    amount = rng.lognormal(3.6, 1.1, n)
    hour = np.where(rng.random(n) < 0.85, rng.normal(14.0, 4.0, n), rng.uniform(0.0, 24.0, n)) % 24.0
    distance = rng.lognormal(1.6, 1.3, n)
    merchant_risk = rng.beta(2.0, 7.0, n)
    card_age = rng.exponential(500.0, n)
    foreign = (rng.random(n) < 0.08).astype(np.float64)
    velocity = rng.poisson(1.2, n).astype(np.float64)
    card_present = (rng.random(n) < 0.6).astype(np.float64)
    x = np.column_stack([amount, hour, distance, merchant_risk, card_age, foreign, velocity, card_present])
    return x, _hidden_rule(rng, x)


def _hidden_rule(rng: np.random.Generator, x: Array) -> Array:
    """The ground truth: thresholds and interactions a linear model can only approximate, plus noise."""
    amount, hour, distance, risk, age, foreign, velocity, present = x.T
    night = (hour < 5.0) | (hour >= 23.0)
    z = (
        -2.1
        + 1.1 * np.maximum(np.log(amount) - 4.0, 0.0)
        + 1.8 * night
        + 0.7 * (distance > 50.0)
        + 5.0 * np.maximum(risk - 0.25, 0.0)
        + 1.6 * (age < 60.0)
        + 2.4 * foreign * (1.0 - present)
        + 0.9 * np.maximum(velocity - 2.0, 0.0)
        - 1.0 * present
    )
    noisy: Array = z + rng.normal(0.0, 0.5, len(z))
    return (noisy > 0.0).astype(np.float64)


def expand(x: Array) -> Array:
    """The model's inputs: log scales, the hour on a circle, and two interactions."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if x.shape[1] != N_FEATURES:
        raise ValueError(f"expected {N_FEATURES} features ({', '.join(FEATURES)}), got {x.shape[1]}")
    amount, hour, distance, risk, age, foreign, velocity, present = x.T
    log_amount = np.log1p(np.maximum(amount, 0.0))
    angle = 2.0 * math.pi * hour / 24.0
    return np.column_stack(
        [
            log_amount,
            np.sin(angle),
            np.cos(angle),
            np.log1p(np.maximum(distance, 0.0)),
            risk,
            np.log1p(np.maximum(age, 0.0)),
            foreign,
            velocity,
            present,
            foreign * (1.0 - present),
            log_amount**2,
            risk**2,
        ]
    )


@dataclass(frozen=True)
class Model:
    """A trained logistic regression: standardisation, weights, bias, and the decision threshold."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float = 0.5
    name: str = "fraud-logreg"

    def predict_proba(self, x: Array) -> Array:
        """P(fraud) for each row of raw features (one row or many)."""
        z = (expand(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = z @ np.asarray(self.weights) + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(logits, -50.0, 50.0))), dtype=np.float64)

    def predict(self, x: Array) -> npt.NDArray[np.bool_]:
        """Fraud or not, for each row."""
        return self.predict_proba(x) >= self.threshold

    def accuracy(self, x: Array, labels: Array) -> float:
        """The share of rows predicted right."""
        return float(np.mean(self.predict(x) == (np.asarray(labels) > 0.5)))

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "mean": self.mean,
                "scale": self.scale,
                "weights": self.weights,
                "bias": self.bias,
                "threshold": self.threshold,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Model:
        data = json.loads(text)
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            scale=tuple(float(v) for v in data["scale"]),
            weights=tuple(float(v) for v in data["weights"]),
            bias=float(data["bias"]),
            threshold=float(data.get("threshold", 0.5)),
            name=str(data.get("name", "fraud-logreg")),
        )

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Model:
        return cls.from_json(path.read_text(encoding="utf-8"))


def train(
    features: Array,
    labels: Array,
    *,
    seed: int = 0,
    epochs: int = 400,
    learning_rate: float = 0.5,
    l2: float = 1e-4,
    name: str = "fraud-logreg",
) -> Model:
    """Logistic regression by full-batch gradient descent on standardised :func:`expand` features."""
    z = expand(features)
    y = np.asarray(labels, dtype=np.float64)
    if len(y) != len(z) or len(y) == 0:
        raise ValueError(f"need as many labels as rows, got {len(y)} labels for {len(z)} rows")
    mean = z.mean(axis=0)
    scale = z.std(axis=0)
    scale[scale == 0.0] = 1.0
    z = (z - mean) / scale
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.01, z.shape[1])
    prior = min(max(float(y.mean()), 1e-3), 1.0 - 1e-3)
    b = math.log(prior / (1.0 - prior))
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w + b, -50.0, 50.0)))
        error = p - y
        w -= learning_rate * (z.T @ error / len(y) + l2 * w)
        b -= learning_rate * float(error.mean())
    return Model(
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in w),
        bias=float(b),
        name=name,
    )


def train_degraded(
    features: Array, labels: Array, *, seed: int = 0, mislabel_rate: float = 0.4, epochs: int = 400
) -> Model:
    """A worse model: trained as :func:`train`, but on labels from a broken join.

    ``mislabel_rate`` of the legitimate transactions are labelled fraud (disputes counted as
    fraud, say). Asymmetric noise moves the learned decision boundary towards "fraud", so the model
    flags many legitimate transactions: the default costs 10 to 15 points of accuracy.
    """
    if not 0.0 <= mislabel_rate < 1.0:
        raise ValueError(f"mislabel_rate must be in [0, 1), got {mislabel_rate!r}")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels, dtype=np.float64).copy()
    flip = (y < 0.5) & (rng.random(len(y)) < mislabel_rate)
    y[flip] = 1.0
    return train(features, y, seed=seed, epochs=epochs, name="fraud-logreg-degraded")
