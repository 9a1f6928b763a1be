import torch

from steerlab.data.files import PreferencePair
from steerlab.methods.subsets import train_on_subsets
from steerlab.steering.vectors import SteeringVector, meta_for

PAIRS = [PreferencePair(f"q{i}", "a", "b", id=str(i)) for i in range(20)]


def test_nested_subsets_per_seed_and_resume(tiny, tmp_path):
    calls = []

    def fake_train(subset, seed):
        calls.append((len(subset), seed, {p.id for p in subset}))
        return SteeringVector({0: torch.ones(tiny.d_model)},
                              meta_for(tiny, "fake", n_examples=len(subset)))

    paths = train_on_subsets(fake_train, PAIRS, [2, 4, 8], [0, 1], tmp_path, name="fake")
    assert len(paths) == 6 and all(p.exists() for p in paths)
    for seed in (0, 1):
        ids = [c[2] for c in calls if c[1] == seed]
        assert ids[0] <= ids[1] <= ids[2] and [len(i) for i in ids] == [2, 4, 8]
    assert [c[2] for c in calls if c[1] == 0] != [c[2] for c in calls if c[1] == 1]
    calls.clear()
    train_on_subsets(fake_train, PAIRS, [2, 4, 8, 16], [0, 1], tmp_path, name="fake")
    assert [(c[0], c[1]) for c in calls] == [(16, 0), (16, 1)]  # finished files are kept
