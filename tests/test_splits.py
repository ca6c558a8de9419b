import numpy as np
import pytest

from mia_torch.data.splits import carve_validation, make_splits, validation_indices


def test_keep_matrix_balanced_and_seeded():
    a = make_splits(8, 101, seed=3)
    b = make_splits(8, 101, seed=3)
    c = make_splits(8, 101, seed=4)
    assert a.keep.dtype == bool and a.keep.shape == (8, 101)
    np.testing.assert_array_equal(a.keep, b.keep)
    assert not np.array_equal(a.keep, c.keep)
    assert (a.keep.sum(0) == 4).all()  # every example IN for exactly half of the models
    assert (np.abs(a.keep.sum(1) - 101 / 2) <= 0.5).all()


def test_adding_models_keeps_existing_rows():
    small = make_splits(4, 50, seed=0)
    large = make_splits(10, 50, seed=0)
    np.testing.assert_array_equal(small.keep, large.keep[:4])


@pytest.mark.parametrize("num_models", [6, 7])
def test_shared_references_carry_no_membership_of_the_target(num_models):
    s = make_splits(num_models, 60, seed=0, target_ids=[0, 3, num_models - 1])
    assert s.reference_ids[0] == tuple(range(2, num_models))
    assert 3 not in s.reference_ids[3] and 2 not in s.reference_ids[3]
    assert s.eval_mask.all()
    for t, refs in s.reference_ids.items():
        in_counts = s.keep[list(refs)].sum(0)
        if num_models % 2 == 0:  # all references paired: every example IN for exactly half
            assert (in_counts == len(refs) // 2).all()
        # The IN count of the references is independent of the target's membership.
        members, others = in_counts[s.keep[t]], in_counts[~s.keep[t]]
        assert abs(members.mean() - others.mean()) < 0.3


def test_disjoint_shadow_data_never_overlaps_target_data():
    s = make_splits(9, 200, seed=1, target_ids=[0], threat_model="disjoint")
    target_pool = s.eval_mask
    shadows = list(s.reference_ids[0])
    assert 0 not in shadows and len(shadows) == 8
    assert not s.keep[shadows][:, target_pool].any()
    assert not s.keep[0][~target_pool].any()
    assert abs(int(s.keep[0][target_pool].sum()) - target_pool.sum() / 2) <= 0.5
    assert (s.keep[shadows][:, ~target_pool].sum(0) == 4).all()


@pytest.mark.parametrize(
    "kwargs, key",
    [({"threat_model": "nope"}, "threat_model"), ({"target_ids": [9]}, "target_ids"), ({"target_ids": []}, "target_ids")],
    ids=["threat", "range", "empty"],
)
def test_invalid_split_arguments_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        make_splits(4, 10, seed=0, **kwargs)


SEEDS = [10, 11, 12, 13, 14, 15]


def test_validation_carve_out_is_seeded_per_model_and_never_trained_on():
    s = make_splits(6, 200, seed=0)
    a = carve_validation(s, fraction=0.2, seeds=SEEDS)
    np.testing.assert_array_equal(a.validation, carve_validation(s, fraction=0.2, seeds=SEEDS).validation)
    assert not (a.keep & a.validation).any()  # held-out records are not members of that model
    np.testing.assert_array_equal(a.assigned, s.keep)  # together they are the half the model was dealt
    assert (a.validation.sum(1) == np.round(0.2 * s.keep.sum(1))).all()
    assert a.reference_ids == s.reference_ids and np.array_equal(a.eval_mask, s.eval_mask)
    # a function of the model's half and its own seed only
    other = carve_validation(s, fraction=0.2, seeds=[10, 99, 12, 13, 14, 15])
    np.testing.assert_array_equal(other.validation[[0, 2, 3, 4, 5]], a.validation[[0, 2, 3, 4, 5]])
    assert not np.array_equal(other.validation[1], a.validation[1])
    grown = carve_validation(make_splits(8, 200, seed=0), fraction=0.2, seeds=[*SEEDS, 16, 17])
    np.testing.assert_array_equal(grown.validation[:6], a.validation)


def test_carve_out_keeps_reference_in_counts_independent_of_the_target():
    s = carve_validation(make_splits(16, 3000, seed=2), fraction=0.25, seeds=range(16))
    refs = list(s.reference_ids[0])
    in_counts = s.keep[refs].sum(0)
    members, others = in_counts[s.keep[0]], in_counts[~s.keep[0]]
    assert abs(members.mean() - others.mean()) < 0.15, (members.mean(), others.mean())


def test_validation_indices_are_a_seeded_subset_of_the_members():
    members = np.arange(5, 105, 2)
    got = validation_indices(members, fraction=0.1, seed=3)
    assert len(got) == 5 and set(got) <= set(members) and np.all(np.diff(got) > 0)
    assert validation_indices(members[:3], fraction=0.01, seed=0).size == 1  # at least one
    assert validation_indices(members[:3], fraction=0.99, seed=0).size == 2  # leaves one to train on
    with pytest.raises(ValueError, match="validation_fraction"):
        validation_indices(members, fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="cannot hold out"):
        validation_indices(members[:1], fraction=0.5, seed=0)
