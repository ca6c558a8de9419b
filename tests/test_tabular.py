"""Tabular records: the csv and breast_cancer datasets, their encoding, queries and whole runs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_config, run_experiment
from mia_torch.data import Dataset, DatasetLoader, DatasetNotFoundError, load_dataset, parse_queries
from mia_torch.data.builtin import Digits
from mia_torch.data.tabular import BreastCancer, CsvRecords
from mia_torch.models import MLP, FastCifarCNN, ResNet18, SmallCNN, WideResNet
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults
from mia_torch.settings.load import load_settings
from mia_torch.signals.collect import collect_logits
from mia_torch.training.config import TrainConfig
from mia_torch.signals.collect_many import collect_logits_many
from mia_torch.training.ensemble import train_models
from mia_torch.signals.manifest import load_run_signals

POPULATION = """age,city,smoker,score,outcome
30,a,1,1.5,no
40,b,0,2.5,yes
,a,1,3.5,no
50,b,0,4.5,yes
60,a,1,5.5,yes
45,,0,6.5,no
"""

TEST = """age,city,smoker,score,outcome
35,c,0,2.0,no
45,a,1,,yes
,b,,3.0,no
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def standardised(values: list[float], population: list[float]) -> np.ndarray:
    pop = np.asarray(population)
    return (np.asarray(values) - pop.mean()) / pop.std()


# --------------------------------------------------------------------------- encoding


def test_csv_encoding_is_fitted_on_the_population_only(tmp_path):
    write(tmp_path / "pop.csv", POPULATION)
    write(tmp_path / "test.csv", TEST)
    data = load_dataset(CsvRecords(path="pop.csv", test_path="test.csv", label="outcome", categorical=["smoker"]), root=tmp_path)
    assert data.kind == "tabular" and data.input_shape == (len(data.feature_names),)
    assert set(data.feature_names) == {"num__age", "num__score", "cat__city_<missing>", "cat__city_a", "cat__city_b",
                                       "cat__smoker_0", "cat__smoker_1"}
    column = {name: data.feature_names.index(name) for name in data.feature_names}
    # Missing ages become the population median (45 of 30, 40, 45, 50, 60); mean and std are the population's.
    ages = [30, 40, 45, 50, 60, 45]
    np.testing.assert_allclose(data.x[:, column["num__age"]], standardised(ages, ages), rtol=1e-5)
    np.testing.assert_allclose(data.x_test[:, column["num__age"]], standardised([35, 45, 45], ages), rtol=1e-5)
    scores = [1.5, 2.5, 3.5, 4.5, 5.5, 6.5]  # median 4.0 fills the test's missing score
    np.testing.assert_allclose(data.x_test[:, column["num__score"]], standardised([2.0, 4.0, 3.0], scores), rtol=1e-5)
    # One-hot over the population's categories; a missing city is a category of its own.
    cities = data.x[:, [column["cat__city_a"], column["cat__city_b"], column["cat__city_<missing>"]]]
    assert cities.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]
    # The test's city "c" and its missing smoker were never seen in the population: all zeros.
    test_cities = data.x_test[:, [column["cat__city_a"], column["cat__city_b"], column["cat__city_<missing>"]]]
    assert test_cities.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    smoker = data.x_test[:, [column["cat__smoker_0"], column["cat__smoker_1"]]]
    assert smoker.tolist() == [[1, 0], [0, 1], [0, 0]]
    assert data.class_names == ("no", "yes") and data.num_classes == 2
    assert data.y.tolist() == [0, 1, 0, 1, 1, 0] and data.y_test.tolist() == [0, 1, 0]
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64


def test_numeric_labels_sort_as_numbers_and_text_columns_are_categorical(tmp_path):
    rows = ["colour,size,grade"] + [f"{c},{s},{g}" for c, s, g in
                                     [("red", 1, 10), ("blue", 2, 2), ("red", 3, 2), ("blue", 4, 10), ("red", 5, 3)]]
    write(tmp_path / "grades.csv", "\n".join(rows) + "\n")
    write(tmp_path / "grades_test.csv", "colour,size,grade\nblue,2,3\n")
    data = load_dataset(CsvRecords(path="grades.csv", test_path="grades_test.csv", label="grade"), root=tmp_path)
    assert data.class_names == ("2", "3", "10")  # numerically, not "10" < "2"
    assert data.y.tolist() == [2, 0, 0, 2, 1] and data.y_test.tolist() == [1]
    assert set(data.feature_names) == {"num__size", "cat__colour_blue", "cat__colour_red"}


def test_test_fraction_split_is_seeded_and_indices_are_file_rows(tmp_path):
    rows = ["row,group,label"] + [f"{i},{'xy'[i % 2]},{i % 3}" for i in range(50)]
    write(tmp_path / "rows.csv", "\n".join(rows) + "\n")
    data = load_dataset(CsvRecords(path="rows.csv", label="label", test_fraction=0.2), root=tmp_path, seed=1)
    again = load_dataset(CsvRecords(path="rows.csv", label="label", test_fraction=0.2), root=tmp_path, seed=1)
    other = load_dataset(CsvRecords(path="rows.csv", label="label", test_fraction=0.2), root=tmp_path, seed=2)
    assert len(data.y) == 40 and len(data.y_test) == 10
    assert torch.equal(data.test_indices, again.test_indices) and not torch.equal(data.test_indices, other.test_indices)
    assert sorted(data.indices.tolist() + data.test_indices.tolist()) == list(range(50))
    assert data.y.tolist() == [i % 3 for i in data.indices.tolist()]  # labels 0, 1, 2 are classes 0, 1, 2
    # The `row` column, standardised with the population's mean and std, still reads back as the row number.
    rows_back = data.x_test[:, data.feature_names.index("num__row")].double()
    pop_rows = data.indices.double()
    restored = rows_back * pop_rows.std(unbiased=False) + pop_rows.mean()
    np.testing.assert_allclose(restored, data.test_indices.double(), atol=1e-4)
    default = load_dataset(CsvRecords(path="rows.csv", label="label"), root=tmp_path)
    assert len(default.y_test) == 10  # 0.2 of the rows without test_path


def test_drop_removes_columns_and_identifier_like_columns_are_warned_about(tmp_path, caplog):
    rows = ["patient,value,label"] + [f"p{i},{i % 7},{i % 2}" for i in range(40)]
    write(tmp_path / "ids.csv", "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="mia_torch.data.tabular"):
        load_dataset(CsvRecords(path="ids.csv", label="label"), root=tmp_path)
    assert "`patient`" in caplog.text and "dataset.drop=[patient]" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mia_torch.data.tabular"):
        data = load_dataset(CsvRecords(path="ids.csv", label="label", drop=["patient"]), root=tmp_path)
    assert data.feature_names == ("num__value",) and not caplog.text


# --------------------------------------------------------------------------- bad inputs


GOOD = "a,b,label\n1,x,0\n2,y,1\n3,x,0\n4,y,1\n5,x,0\n"


@pytest.mark.parametrize(
    ("options", "files", "needles"),
    [
        ({}, {}, ["dataset.path"]),
        ({"path": "good.csv"}, {}, ["dataset.label"]),
        ({"path": "nowhere.csv", "label": "label"}, {}, ["nowhere.csv", "dataset.path"]),
        ({"path": "good.csv", "label": "class"}, {}, ["dataset.label", "'class'", "good.csv"]),
        ({"path": "good.csv", "label": "label", "test_path": "gone.csv"}, {}, ["gone.csv", "dataset.test_path"]),
        ({"path": "good.csv", "label": "label", "categorical": ["c"]}, {}, ["dataset.categorical", "'c'"]),
        ({"path": "good.csv", "label": "label", "drop": ["zz"]}, {}, ["dataset.drop", "'zz'"]),
        ({"path": "good.csv", "label": "label", "categorical": "a"}, {}, ["dataset.categorical", "list"]),
        ({"path": "good.csv", "label": "label", "drop": ["label"]}, {}, ["dataset.drop", "label"]),
        ({"path": "good.csv", "label": "label", "missing": "drop"}, {}, ["dataset.missing"]),
        ({"path": "good.csv", "label": "label", "test_fraction": 1.5}, {}, ["dataset.test_fraction"]),
        ({"path": "good.csv", "label": "label", "test_fraction": 0.01}, {}, ["dataset.test_fraction"]),
        ({"path": "good.csv", "label": "label", "test_path": "good.csv", "test_fraction": 0.2}, {},
         ["dataset.test_path", "dataset.test_fraction"]),
        ({"path": "one.csv", "label": "label"}, {"one.csv": "a,label\n1,yes\n2,yes\n3,yes\n4,yes\n5,yes\n"},
         ["`label`", "single class", "'yes'"]),
        ({"path": "hole.csv", "label": "label"}, {"hole.csv": "a,e,label\n1,,0\n2,,1\n3,,0\n4,,1\n5,,0\n"},
         ["`e`", "no value", "dataset.drop"]),
        ({"path": "nolabel.csv", "label": "label"}, {"nolabel.csv": "a,label\n1,0\n2,\n3,1\n4,0\n5,1\n"},
         ["`label`", "row 1", "empty"]),
        ({"path": "good.csv", "label": "label", "test_path": "new.csv"}, {"new.csv": "a,b,label\n1,x,7\n"},
         ["new.csv", "`label`", "'7'"]),
        ({"path": "good.csv", "label": "label", "test_path": "short.csv"}, {"short.csv": "a,label\n1,0\n"},
         ["short.csv", "'b'"]),
        ({"path": "good.csv", "label": "label", "test_path": "text.csv"}, {"text.csv": "a,b,label\n1,x,0\nmany,x,0\n"},
         ["text.csv", "`a`", "row 1: 'many'", "dataset.non_numeric=missing", "dataset.categorical"]),
        ({"path": "typo.csv", "label": "label"}, {"typo.csv": "a,b,label\n1,x,0\n2,y,1\nabc,x,0\n4,y,1\n5,x,0\n"},
         ["typo.csv", "`a`", "1 of", "row 2: 'abc'", "dataset.non_numeric=missing"]),
        ({"path": "dup.csv", "label": "label"}, {"dup.csv": "a,b, a,label\n1,x,2,0\n2,y,3,1\n3,x,4,0\n"},
         ["dup.csv", "duplicate column names", "'a' in columns [0, 2]"]),
        ({"path": "good.csv", "label": "label", "test_path": "dup.csv"}, {"dup.csv": "a,b,b,label\n1,x,x,0\n"},
         ["dup.csv", "dataset.test_path", "'b' in columns [1, 2]"]),
        ({"path": "good.csv", "label": "label", "non_numeric": "skip"}, {}, ["dataset.non_numeric", "'skip'"]),
        ({"path": "good.csv", "label": "label", "non_numeric": "missing", "missing": "error"}, {},
         ["dataset.non_numeric", "dataset.missing=impute"]),
        ({"path": "gap.csv", "label": "label", "missing": "error"},
         {"gap.csv": "a,b,label\n1,x,0\n,y,1\n3,x,0\n4,y,1\n"},
         ["gap.csv", "'a'", "dataset.missing"]),
        ({"path": "empty.csv", "label": "label"}, {"empty.csv": ""}, ["empty.csv", "empty"]),
        ({"path": "header.csv", "label": "label"}, {"header.csv": "a,label\n"}, ["header.csv", "no records"]),
        ({"path": "inf.csv", "label": "label"}, {"inf.csv": "a,label\n1,0\ninf,1\n3,0\n4,1\n5,0\n"},
         ["inf.csv", "`a`", "infinite"]),
    ],
)
def test_bad_csv_inputs_are_refused_naming_the_file_column_or_key(tmp_path, options, files, needles):
    write(tmp_path / "good.csv", GOOD)
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises((ValueError, DatasetNotFoundError)) as info:
        load_dataset(CsvRecords(**options), root=tmp_path)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_one_text_cell_in_a_numeric_column_is_refused_or_read_as_missing(tmp_path):
    """One ``abc`` among 500 ages: refused naming column, row and value; with non_numeric=missing the cell is a
    missing value (imputed with the population median), so the column stays one standardised feature."""
    rng = np.random.default_rng(0)
    ages = rng.integers(18, 90, 500)
    rows = [f"{age},{city},{label}" for age, city, label in zip(ages, rng.choice(["a", "b"], 500),
                                                                 rng.integers(0, 2, 500))]
    rows[321] = "abc," + rows[321].split(",", 1)[1]
    write(tmp_path / "typo.csv", "\n".join(["age,city,label", *rows]) + "\n")
    write(tmp_path / "test.csv", "age,city,label\n40,a,0\n50,b,1\n")
    options = dict(path="typo.csv", test_path="test.csv", label="label")
    with pytest.raises(ValueError, match=r"column `age` of .*typo\.csv is numeric .* 1 of 500 rows: row 321: 'abc'"):
        load_dataset(CsvRecords(**options), root=tmp_path)
    coerced = load_dataset(CsvRecords(**options, non_numeric="missing"), root=tmp_path)
    assert coerced.feature_names == ("num__age", "cat__city_a", "cat__city_b")
    known = np.delete(ages, 321).astype(np.float64)
    imputed = np.insert(known, 321, np.median(known))
    np.testing.assert_allclose(coerced.x[:, 0].numpy(), (imputed - imputed.mean()) / imputed.std(), atol=1e-5)


def test_a_mostly_text_column_stays_categorical(tmp_path):
    """More text than numbers: the column is categorical, numbers among its categories, as before."""
    write(tmp_path / "sizes.csv", "size,label\nS,0\nM,1\nL,0\n42,1\nXL,0\nS,1\n")
    data = load_dataset(CsvRecords(path="sizes.csv", label="label", test_fraction=0.2), root=tmp_path)
    assert all(name.startswith("cat__size_") for name in data.feature_names)


# --------------------------------------------------------------------------- breast_cancer, queries, models


def test_breast_cancer_records_load_standardised_with_a_seeded_split():
    data = load_dataset(BreastCancer(), root=None)
    assert data.kind == "tabular" and BreastCancer.kind == "tabular"
    assert data.x.shape == (469, 30) and data.x_test.shape == (100, 30) and data.input_shape == (30,)
    assert data.class_names == ("benign", "malignant") and data.num_classes == 2
    # The Wisconsin diagnostic data set: 569 patients, 212 malignant and 357 benign.
    assert int(data.y.sum() + data.y_test.sum()) == 212
    assert sorted(data.indices.tolist() + data.test_indices.tolist()) == list(range(569))
    torch.testing.assert_close(data.x.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.x.std(0, unbiased=False), torch.ones(30), atol=1e-4, rtol=0)
    assert not torch.equal(data.test_indices, load_dataset(BreastCancer(), root=None, seed=1).test_indices)
    with pytest.raises(ValueError, match="dataset.num_test"):
        load_dataset(BreastCancer(num_test=569), root=None)
    subset = load_dataset(BreastCancer(population_size=100), root=None)
    assert subset.x.shape == (100, 30) and set(subset.indices.tolist()) <= set(data.indices.tolist())


class _Records(DatasetLoader):
    """A tabular loader whose ``kind`` option makes it return image data instead."""

    kind = "tabular"

    def load(self, *, root, download, seed, kind: str = "tabular"):
        x = torch.zeros(6, 3) if kind == "tabular" else torch.zeros(6, 1, 2, 2)
        y = torch.tensor([0, 1] * 3)
        return Dataset("tiny_records", x, y, x[:2], y[:2], 2, kind=kind)


def test_a_loaders_kind_is_known_before_loading_and_checked_after():
    assert _Records.kind == "tabular" and Digits.kind == "image"
    assert load_dataset(_Records(), root=None).input_shape == (3,)
    with pytest.raises(ValueError, match="declared as tabular data but its loader returned image"):
        load_dataset(_Records(kind="image"), root=None)
    with pytest.raises(ValueError, match=r"records \[N, F\]"):
        Dataset("bad", torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64), torch.zeros(1, 1, 2, 2),
                torch.zeros(1, dtype=torch.int64), 2, kind="tabular")


def test_each_kind_of_dataset_brings_its_default_queries(tmp_path):
    tabular = load_settings(make_config(tmp_path, ["dataset=breast_cancer", "model=mlp"]))
    images = load_settings(make_config(tmp_path, ["dataset=digits"]))
    assert tabular.queries == ("identity",) and images.queries == ("identity", "flip")
    explicit = load_settings(make_config(tmp_path, ["dataset=digits", "queries=[identity,shift_1_0]"]))
    assert explicit.queries == ("identity", "shift_1_0")
    assert parse_queries(None, kind="tabular") == ["identity"]
    assert parse_queries(["identity"], kind="tabular") == ["identity"]


@pytest.mark.parametrize("names", [["identity", "flip"], ["shift_1_0"], ["flip_shift_0_1"]])
def test_image_queries_on_tabular_data_are_refused(names):
    with pytest.raises(ValueError, match="`queries`.*tabular"):
        parse_queries(names, kind="tabular")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("queries=[identity,flip]", "queries"),
        ("train.crop_padding=2", "train.crop_padding"),
        ("train.flip=true", "train.flip"),
        ("train.augment.cutout=2", "train.augment.cutout"),
        ("model=small_cnn", "model=mlp"),
        ("model=resnet18", "model=mlp"),
    ],
)
def test_image_only_settings_on_tabular_data_fail_before_training(tmp_path, override, needle):
    with pytest.raises(Exception, match=needle):
        run_experiment(tmp_path, ["dataset=breast_cancer", "model=mlp", "progress=false", override])
    assert not (tmp_path / "store" / "models").exists()


@pytest.mark.parametrize("build", [SmallCNN, FastCifarCNN, ResNet18, WideResNet])
def test_conv_models_given_tabular_shapes_point_to_the_mlp(build):
    with pytest.raises(ValueError, match="`model`.*tabular.*model=mlp"):
        build(input_shape=(30,), num_classes=2)


def test_mlp_takes_feature_vectors():
    mlp = MLP(input_shape=(7,), num_classes=3, hidden_sizes=(5,))
    assert mlp.net[1].in_features == 7
    assert mlp(torch.randn(4, 7)).shape == (4, 3)
    with pytest.raises(ValueError, match="input_shape"):
        MLP(input_shape=(7, 2), num_classes=3)


def test_models_trained_together_on_records_match_one_by_one():
    """The multi-model trainer and querying take [N, F] records too (the path CUDA uses by default)."""
    data = load_dataset(BreastCancer(), root=None)
    members = [torch.arange(0, 469, 2), torch.arange(1, 469, 2)]
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05)
    results = {}
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        models = [MLP(input_shape=(30,), num_classes=2, hidden_sizes=(16,)) for _ in members]
        trained = train_models(models, data.x, data.y, members, cfg, seeds=[3, 4], strategy=strategy)
        results[strategy] = (trained, models)
    for rv, rl in zip(results["vmap"][0], results["loop"][0]):
        assert rv.metrics["epoch_train_loss"] == pytest.approx(rl.metrics["epoch_train_loss"], rel=1e-4)
    models = results["vmap"][1]
    many = collect_logits_many(models, data.x, ["identity"], strategy="vmap")
    one = torch.stack([collect_logits(m, data.x, ["identity"]) for m in models])
    assert many.shape == (2, 469, 1, 2)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- whole runs


def write_records(path: Path, *, rows: int = 200, features: int = 8, seed: int = 0) -> None:
    """Mixed numeric/categorical records with random labels (only memorisation can fit them), one cell empty."""
    rng = np.random.default_rng(seed)
    lines = [",".join([f"x{j}" for j in range(features)] + ["channel", "region", "fraud"])]
    for i in range(rows):
        numbers = [f"{v:.3f}" for v in rng.normal(size=features)]
        if i == 7:
            numbers[0] = ""
        categories = [rng.choice(["web", "app", "branch"]), rng.choice(["north", "south"]), rng.choice(["no", "yes"])]
        lines.append(",".join(numbers + categories))
    path.write_text("\n".join(lines) + "\n")


def test_csv_runs_end_to_end_and_a_memorising_target_leaks(tmp_path):
    (tmp_path / "data").mkdir()
    write_records(tmp_path / "data" / "transactions.csv")
    results = run_experiment(tmp_path, [
        "dataset=csv", "dataset.path=transactions.csv", "dataset.label=fraud", f"data_dir={tmp_path / 'data'}",
        "model=mlp", "train=adam", "train.lr=0.01", "train.epochs=30", "train.batch_size=32",
        "num_models=4", "target_ids=[0,1]",
        "attack=[loss,lira_offline,rmia]", "bootstrap=50", "progress=false",
    ])
    run_dir = tmp_path / "run"
    saved = RunResults.from_dict(read_json(run_dir / "results.json"))
    assert saved.config["queries"] == ["identity"] and saved.dataset["population"] == 160
    assert load_run_signals(run_dir).shape == (4, 160, 1, 2)
    assert (run_dir / "records_target0.csv").is_file()
    for target in (0, 1):
        assert results.targets[target].train_acc > 0.95  # memorised random labels
    assert results.attacks["loss"].pooled.auc > 0.7  # members are the records it memorised
    for name, entry in results.attacks.items():
        assert abs(entry.sanity.auc - 0.5) < 0.12, name  # an untrained target carries no membership


def test_medical_records_experiment_composes_and_runs(tmp_path):
    cfg = make_config(tmp_path, ["experiment=medical_records"])
    assert cfg.dataset.name == "breast_cancer" and cfg.model._target_ == "mia_torch.models.MLP"
    assert cfg.train.optimizer == "adam" and cfg.num_models >= 16 and len(cfg.target_ids) > 1
    assert {"loss", "lira_online", "lira_offline", "rmia"} <= set(cfg.attack)
    results = run_experiment(tmp_path, ["experiment=medical_records", "num_models=4", "target_ids=[0,1]",
                                        "train.epochs=20", "bootstrap=20", "progress=false"])
    assert set(results.attacks) == set(cfg.attack)
    for target in (0, 1):
        assert results.targets[target].test_acc > 0.9  # the diagnosis is learnable from the records
