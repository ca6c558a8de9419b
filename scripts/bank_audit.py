"""The bank's side of the bank-transactions audit walkthrough (docs/bank-audit.md).

Writes, into ``--out`` (default ``data/bank``, where ``experiment=bank_audit`` looks):

- ``population.csv``: the transactions the bank holds (a seeded synthetic table: numbers,
  categories, missing cells, an identifier, the label ``fraud``); ``holdout.csv``: others,
  for test accuracy; ``members.npy``: the rows of ``population.csv`` the bank trained on;
- ``encoder.skops``: the bank's own ``ColumnTransformer`` (imputation, scaling, one-hot),
  fitted on the training rows and saved with skops;
- ``fraud_mlp.pt``: the ``state_dict`` of a PyTorch MLP the bank trained on the encoded
  training rows with its own loop (Adam, cosine schedule, no weight decay: it overfits);
- ``hgb_proba.npy`` / ``forest_proba.npy``: ``predict_proba`` of a scikit-learn
  ``HistGradientBoostingClassifier`` and ``RandomForestClassifier`` trained on the same
  features, on every row of ``population.csv``;
- ``features.npz``: the same features as a matrix (the ``dataset=npz_features`` route).

Then it prints the audit commands. Run from the checkout root:
``python scripts/bank_audit.py && mia-run experiment=bank_audit audit.checkpoint=data/bank/fraud_mlp.pt
audit.members=data/bank/members.npy``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io as sio
import torch
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn

NUMERIC = ["customer_age", "account_tenure_months", "monthly_income", "balance", "amount", "hour", "tx_last_24h",
           "distance_from_home_km"]
CATEGORICAL = ["merchant_category", "channel", "country", "card_type"]
MERCHANTS = ["grocery", "restaurant", "fuel", "travel", "electronics", "online_retail", "gambling", "cash"]
RISKY_MERCHANTS = ["travel", "electronics", "gambling"]
HIDDEN = 128  # the MLP's hidden layer (mia_torch: model=mlp model.hidden_sizes=[128])
EPOCHS, BATCH, LR = 150, 64, 3e-3  # mia_torch: train=adam train.lr=3e-3 train.epochs=150 train.batch_size=64


def make_table(num_records: int, *, seed: int = 0) -> pd.DataFrame:
    """A seeded synthetic table of card transactions: mixed columns and a fraud label drawn from a logistic model.

    The label is random given the features (the best possible accuracy is about 0.88 at a
    fraud rate of about 22%), so a model can fit its training rows only by memorising some of
    them, which is what an audit detects.
    """
    rng = np.random.default_rng(seed)
    n = num_records
    age = np.clip(rng.normal(45, 15, n), 18, 90).astype(int)
    tenure = np.minimum(rng.exponential(60, n), (age - 18) * 12).astype(int)
    merchant = rng.choice(MERCHANTS, n, p=[0.25, 0.15, 0.12, 0.06, 0.08, 0.2, 0.04, 0.1])
    channel = rng.choice(["chip", "contactless", "online", "atm"], n, p=[0.35, 0.3, 0.27, 0.08])
    country = rng.choice(["home", "eu", "other"], n, p=[0.85, 0.1, 0.05])
    amount = np.round(rng.lognormal(3.5, 1.2, n), 2)
    hour = np.where(rng.random(n) < 0.9, rng.integers(7, 23, n), rng.integers(0, 7, n))
    recent = rng.poisson(3, n)
    distance = np.round(rng.exponential(12, n) * np.where(country == "home", 1, 20), 1)
    risk = (1.1 * (channel == "online") + 0.55 * np.log(amount / 30) + 1.0 * (country != "home")
            + 0.9 * np.isin(merchant, RISKY_MERCHANTS) + 0.8 * (hour < 6) + 0.18 * (recent - 3) - 0.008 * tenure
            + 0.3 * (age < 25))
    fraud = (rng.random(n) < 1 / (1 + np.exp(3.4 - 2.5 * risk))).astype(int)  # ~22% fraud; Bayes accuracy ~0.88
    income = np.round(rng.lognormal(8.0, 0.5, n), 2)
    income[rng.random(n) < 0.03] = np.nan  # not every customer declared an income
    return pd.DataFrame({
        "transaction_id": [f"TX{seed:02d}{i:06d}" for i in range(n)],
        "customer_age": age, "account_tenure_months": tenure, "monthly_income": income,
        "balance": np.round(rng.lognormal(8.5, 1.0, n), 2), "amount": amount, "hour": hour,
        "merchant_category": merchant, "channel": channel, "country": country,
        "card_type": rng.choice(["debit", "credit", "premium"], n, p=[0.6, 0.32, 0.08]),
        "tx_last_24h": recent, "distance_from_home_km": distance, "fraud": fraud,
    })


def bank_encoder() -> ColumnTransformer:
    """The bank's feature pipeline: median-imputed, standardised numbers; one-hot categories."""
    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMERIC),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
    ])


class FraudMLP(nn.Module):
    """The bank's network. Its layers sit in ``self.net`` like mia_torch's ``MLP``, so its ``state_dict`` loads into
    ``model=mlp model.hidden_sizes=[128]`` (another architecture: point ``model._target_`` at its class)."""

    def __init__(self, num_features: int, hidden: int = HIDDEN, num_classes: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(num_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_mlp(x: np.ndarray, y: np.ndarray, *, seed: int = 0, epochs: int = EPOCHS) -> FraudMLP:
    """The bank's own training loop: Adam, cosine learning rate, shuffled mini-batches, no regularisation."""
    torch.manual_seed(seed)
    model = FraudMLP(x.shape[1])
    features, labels = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    steps = epochs * -(-len(labels) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(BATCH):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(features[batch]), labels[batch]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels))


def write_bank(out: Path, *, num_records: int = 2500, num_holdout: int = 500, seed: int = 0) -> dict[str, float]:
    """Write every file of the walkthrough into ``out`` (see the module docstring); the models' accuracies."""
    out.mkdir(parents=True, exist_ok=True)
    table = make_table(num_records + num_holdout, seed=seed)
    population, holdout = table.iloc[:num_records], table.iloc[num_records:]
    population.to_csv(out / "population.csv", index=False)
    holdout.to_csv(out / "holdout.csv", index=False)
    members = np.sort(np.random.default_rng([seed, 1]).choice(num_records, num_records // 2, replace=False))
    np.save(out / "members.npy", members)
    # the bank's side: read its files as any pandas user would, fit on the training rows only
    population, holdout = pd.read_csv(out / "population.csv"), pd.read_csv(out / "holdout.csv")
    train = population.iloc[members]
    encoder = bank_encoder().fit(train)
    sio.dump(encoder, out / "encoder.skops")
    x_train, x_all, x_holdout = (encoder.transform(t) for t in (train, population, holdout))
    y_train, y_all, y_holdout = (t["fraud"].to_numpy() for t in (train, population, holdout))
    np.savez(out / "features.npz", x_train=x_all, y_train=y_all, x_test=x_holdout, y_test=y_holdout,
             feature_names=np.asarray(encoder.get_feature_names_out(), dtype=str))
    mlp = train_mlp(x_train, y_train, seed=seed)
    torch.save(mlp.state_dict(), out / "fraud_mlp.pt")
    with torch.no_grad():
        mlp_pred = {k: mlp(torch.as_tensor(v, dtype=torch.float32)).argmax(1).numpy()
                    for k, v in (("train", x_train), ("test", x_holdout))}
    figures = {"mlp_train_acc": accuracy(mlp_pred["train"], y_train),
               "mlp_test_acc": accuracy(mlp_pred["test"], y_holdout)}
    classifiers = {
        "hgb": HistGradientBoostingClassifier(max_iter=300, max_leaf_nodes=31, min_samples_leaf=5,
                                              early_stopping=False, random_state=seed),
        "forest": RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
    }
    for name, classifier in classifiers.items():
        classifier.fit(x_train, y_train)
        np.save(out / f"{name}_proba.npy", classifier.predict_proba(x_all))
        figures[f"{name}_train_acc"] = accuracy(classifier.predict(x_train), y_train)
        figures[f"{name}_test_acc"] = accuracy(classifier.predict(x_holdout), y_holdout)
    figures["fraud_rate"] = float(y_all.mean())
    return figures


COMMANDS = """\
# the MLP, from its weights, membership known (full report):
mia-run experiment=bank_audit audit.checkpoint={out}/fraud_mlp.pt audit.members={out}/members.npy
# the gradient-boosted trees, from predict_proba alone (stand-in MLP references):
mia-run experiment=bank_audit audit.outputs={out}/hgb_proba.npy audit.output_kind=probabilities \\
    audit.members={out}/members.npy
# one customer's transaction, membership unknown:
mia-run experiment=bank_audit audit.checkpoint={out}/fraud_mlp.pt 'audit.candidates=[17]'
# the same audit from the feature matrix instead of the table and the encoder (the recipe spelled out):
mia-run dataset=npz_features dataset.path={features} model=mlp 'model.hidden_sizes=[128]' train=adam \\
    train.lr=3e-3 train.epochs=150 train.batch_size=64 num_models=16 'attack=[lira_offline,rmia,loss,population]' \\
    audit.checkpoint={out}/fraud_mlp.pt audit.members={out}/members.npy"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/bank"), help="where to write the files")
    parser.add_argument("--records", type=int, default=2500, help="rows of population.csv")
    parser.add_argument("--holdout", type=int, default=500, help="rows of holdout.csv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = write_bank(args.out, num_records=args.records, num_holdout=args.holdout, seed=args.seed)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    print(COMMANDS.format(out=args.out, features=args.out.resolve() / "features.npz"))


if __name__ == "__main__":
    main()
