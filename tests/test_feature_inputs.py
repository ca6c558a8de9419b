"""Records as the user encoded them: feature matrices (dataset=npz_features) and the user's own encoder
(dataset.encoder) for CSV tables; both give the same features for the same table and encoder."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from helpers import TINY, make_config, run_experiment
from mia_torch.data import load_dataset
from mia_torch.data.npz import NpzFeatures, NpzImages
from mia_torch.data.tabular import CsvRecords
from mia_torch.settings.load import load_settings

NO_DATA = [o for o in TINY if not o.startswith("dataset")]


def _table(n: int = 80, seed: int = 0) -> pd.DataFrame:
    """A small bank-like table: numbers, text categories, a missing cell, an identifier, a label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "transaction_id": [f"t{i:04d}" for i in range(n)],
        "amount": rng.lognormal(3, 1, n).round(2),
        "age": rng.integers(18, 90, n),
        "channel": rng.choice(["atm", "online", "card"], n),
        "branch": rng.integers(1, 4, n),  # an integer code
        "fraud": rng.integers(0, 2, n),
    })
    frame.loc[3, "amount"] = np.nan
    return frame


def _encoder() -> ColumnTransformer:
    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["amount", "age"]),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["channel", "branch"]),
    ])


@pytest.fixture
def bank(tmp_path) -> dict[str, Path]:
    """population.csv / holdout.csv, the bank's encoder fitted on the population (a .skops file), and the feature
    matrix it gives (features.npz), as the bank's own pipeline (pandas.read_csv) would make them."""
    table = _table()
    table.iloc[:60].to_csv(tmp_path / "population.csv", index=False)
    table.iloc[60:].to_csv(tmp_path / "holdout.csv", index=False)
    population, holdout = pd.read_csv(tmp_path / "population.csv"), pd.read_csv(tmp_path / "holdout.csv")
    encoder = _encoder().fit(population.drop(columns=["fraud", "transaction_id"]))
    sio.dump(encoder, tmp_path / "encoder.skops")
    np.savez(tmp_path / "features.npz", x_train=encoder.transform(population), y_train=population["fraud"].to_numpy(),
             x_test=encoder.transform(holdout), y_test=holdout["fraud"].to_numpy(),
             feature_names=np.asarray(encoder.get_feature_names_out(), dtype=str))
    return {"dir": tmp_path, "encoder": tmp_path / "encoder.skops", "features": tmp_path / "features.npz"}


def _csv(bank: dict[str, Path], **options):
    return load_dataset(CsvRecords(path="population.csv", test_path="holdout.csv", label="fraud",
                                   drop=["transaction_id"], **options), root=bank["dir"])


def bank_features(frame: pd.DataFrame, *, encoder: str) -> np.ndarray:
    """A `_target_` encoder: the bank's own function around its fitted transformer."""
    return sio.load(encoder, trusted=sio.get_untrusted_types(file=encoder)).transform(frame)


def as_text(frame: pd.DataFrame) -> np.ndarray:
    return frame.astype(str).to_numpy()


def one_row_short(frame: pd.DataFrame) -> np.ndarray:
    return np.zeros((len(frame) - 1, 3))


def doubled(x):
    return np.asarray(x, dtype=float) * 2


# --------------------------------------------------------------------------- the two routes agree


def test_the_encoder_route_and_the_feature_matrix_route_give_identical_features(bank):
    from_features = load_dataset(NpzFeatures(path="features.npz"), root=bank["dir"])
    from_skops = _csv(bank, encoder="encoder.skops")
    from_callable = _csv(bank, encoder={"_target_": f"{__name__}.bank_features", "encoder": str(bank["encoder"])})
    for data in (from_skops, from_callable):
        assert data.kind == from_features.kind == "tabular"
        for field in ("x", "y", "x_test", "y_test"):
            assert np.array_equal(getattr(data, field).numpy(), getattr(from_features, field).numpy()), field
    assert from_skops.feature_names == from_features.feature_names
    assert "cat__branch_2" in from_skops.feature_names  # integer codes reach the encoder as numbers, as fitted
    assert from_skops.x.shape == (60, 2 + 3 + 3) and from_features.x.dtype == from_skops.x.dtype


def test_feature_matrices_are_tabular_with_the_tabular_defaults(bank, tmp_path):
    features = ["dataset=npz_features", f"dataset.path={bank['features']}"]
    settings = load_settings(make_config(tmp_path, [*NO_DATA, *features]))
    assert settings.queries == ("identity",)
    with pytest.raises(ValueError, match="train.augment.flip"):
        load_settings(make_config(tmp_path, [*NO_DATA, "dataset=npz_features", "train.augment.flip=true"]))
    data = load_dataset(NpzFeatures(path="features.npz"), root=bank["dir"])
    raw = np.load(bank["features"])["x_train"]
    assert np.array_equal(data.x.numpy(), raw.astype(np.float32))  # used unchanged: no scaling
    assert data.mean == () and data.input_shape == (raw.shape[1],)


def test_a_feature_matrix_given_as_images_points_to_npz_features(bank):
    with pytest.raises(ValueError, match="dataset=npz_features"):
        load_dataset(NpzImages(path="features.npz"), root=bank["dir"])


def test_images_given_as_features_are_refused(tmp_path):
    images = np.zeros((10, 4, 4), np.float32)
    labels = np.arange(10) % 2
    np.savez(tmp_path / "images.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    with pytest.raises(ValueError, match=r"x_train.*\[N, F\].*dataset=npz"):
        load_dataset(NpzFeatures(path="images.npz"), root=tmp_path)


# --------------------------------------------------------------------------- bad encoders


def _pickled_transformer(directory: Path, name: str) -> Path:
    """A pickle that would create `pwned` if it were ever unpickled."""
    class Payload:
        def __reduce__(self):
            return (Path.touch, (directory / "pwned",))

    path = directory / name
    path.write_bytes(pickle.dumps({"transformer": Payload()}))
    return path


@pytest.mark.parametrize("name", ["encoder.pkl", "encoder.joblib", "encoder.skops"])
def test_a_pickled_transformer_is_refused_unread_naming_the_file(bank, name):
    path = _pickled_transformer(bank["dir"], name)
    with pytest.raises(ValueError, match="pickle") as info:
        _csv(bank, encoder=name)
    assert str(path) in str(info.value) and "skops.io.dump" in str(info.value)
    assert not (bank["dir"] / "pwned").exists()


def test_types_skops_does_not_trust_are_refused_unless_listed(bank):
    sio.dump(FunctionTransformer(doubled).fit(np.zeros((2, 2))), bank["dir"] / "custom.skops")
    with pytest.raises(ValueError, match=rf"does not trust: \['{__name__}.doubled'\].*dataset.encoder_trusted"):
        _csv(bank, encoder="custom.skops")
    with pytest.raises(ValueError, match="dataset.encoder=.*custom.skops fails on the population rows"):
        _csv(bank, encoder="custom.skops", encoder_trusted=[f"{__name__}.doubled"])  # loaded; text columns fail


@pytest.mark.parametrize("encoder, needles", [
    ({"_target_": f"{__name__}.as_text"}, ["dataset.encoder._target_", "returned str", "row 0, column 0",
                                            "must return numbers"]),
    ({"_target_": f"{__name__}.one_row_short"}, ["dataset.encoder._target_", "returned 59 rows for the 60 records"]),
    ({"_target_": "no_such_module.encode"}, ["dataset.encoder._target_='no_such_module.encode' cannot be imported"]),
    ("missing.skops", ["missing.skops not found", "dataset.encoder"]),
])
def test_bad_encoders_are_refused_naming_the_key(bank, encoder, needles):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        _csv(bank, encoder=encoder)
    for needle in needles:
        assert needle in str(info.value)


def test_an_encoder_returning_nan_is_refused_naming_row_and_column(bank):
    encoder = ColumnTransformer([("num", StandardScaler(), ["amount", "age"])]).fit(
        pd.read_csv(bank["dir"] / "population.csv"))  # no imputer: the missing amount stays NaN
    sio.dump(encoder, bank["dir"] / "no_imputer.skops")
    with pytest.raises(ValueError, match="returned nan at row 3, column 0 for the population rows"):
        _csv(bank, encoder="no_imputer.skops")


def test_mia_torch_encoding_options_do_not_mix_with_an_encoder(bank):
    with pytest.raises(ValueError, match="dataset.categorical"):
        _csv(bank, encoder="encoder.skops", categorical=["branch"])


# --------------------------------------------------------------------------- refused before any training


def _nan_features(tmp: Path) -> None:
    x = np.ones((40, 3))
    x[17, 2] = np.nan
    np.savez(tmp / "nan.npz", x_train=x, y_train=np.arange(40) % 2, x_test=x[:5] * 0, y_test=np.arange(5) % 2,
             feature_names=np.array(["amount", "age", "balance"]))


@pytest.mark.parametrize("overrides, needles", [
    (["dataset=npz_features", "dataset.path={tmp}/nan.npz"], ["{tmp}/nan.npz", "x_train", "NaN", "row 17",
                                                              "column 2 (`balance`)"]),
    (["dataset=csv", "dataset.path={tmp}/population.csv", "dataset.label=fraud",
      f"dataset.encoder={{_target_:{__name__}.as_text}}"], ["dataset.encoder._target_", "must return numbers"]),
    (["dataset=csv", "dataset.path={tmp}/population.csv", "dataset.label=fraud",
      f"dataset.encoder={{tmp}}/encoder.pkl"], ["{tmp}/encoder.pkl", "pickle"]),
])
def test_bad_feature_inputs_stop_before_training(bank, overrides, needles):
    tmp = bank["dir"]
    _nan_features(tmp)
    _pickled_transformer(tmp, "encoder.pkl")
    with pytest.raises(ValueError) as info:
        run_experiment(tmp, [*NO_DATA, *(o.replace("{tmp}", str(tmp)) for o in overrides)])
    for needle in needles:
        assert needle.replace("{tmp}", str(tmp)) in str(info.value)
    assert not (tmp / "store").exists() or not any((tmp / "store").rglob("*"))
