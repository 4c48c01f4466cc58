"""Per-sample keys and the resumable sampler: the foundations of exact resume and DDP equivalence."""

import torch

from sslvit.data import SSLDataModule
from sslvit.data.sampling import KeyedDataset, KeyedSampler
from sslvit.seeding import capture_rng_state, keyed_rand, restore_rng_state, sample_key


def test_sample_keys_are_stable_distinct_and_non_negative():
    keys = {sample_key(0, e, i) for e in range(3) for i in range(1000)}
    assert len(keys) == 3000 and min(keys) >= 0 and max(keys) < 2**63
    assert sample_key(7, 2, 11) == sample_key(7, 2, 11) != sample_key(8, 2, 11)


def test_keyed_rand_depends_only_on_each_key():
    keys = torch.tensor([5, 9, 5, 123])
    out = keyed_rand(keys, 4, 3)
    assert out.shape == (4, 4, 3) and torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1])
    # the same key in another batch, another position: the same numbers
    assert torch.equal(keyed_rand(torch.tensor([123, 1]), 4, 3)[0], out[3])
    assert not torch.equal(keyed_rand(keys, 4, 3, salt=1)[0], out[0]), "salt gives an independent stream"
    assert 0.0 <= out.min() and out.max() < 1.0


def test_augmentation_follows_the_key_not_the_global_rng(image_folder):
    dm = SSLDataModule(dataset="imagefolder", root=str(image_folder), image_size=12, crop_scale=(0.2, 1.0))
    dataset = KeyedDataset(dm.build_dataset("pretrain", dm.train_transform()))
    torch.manual_seed(1)
    a = dataset[(3, 42)][0]
    torch.manual_seed(2)
    before = torch.get_rng_state()
    b = dataset[(3, 42)][0]
    assert torch.equal(a, b), "same key, same crop and flip"
    assert torch.equal(torch.get_rng_state(), before), "the caller's RNG stream is untouched"
    assert not torch.equal(dataset[(3, 43)][0], a)


def test_shards_of_two_ranks_make_the_single_process_global_batches():
    dataset = list(range(40))
    single = list(KeyedSampler(dataset, batch_size=8, num_replicas=1, rank=0, seed=3))
    ranks = [list(KeyedSampler(dataset, batch_size=4, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    for step in range(5):
        global_batch = set(single[step * 8 : (step + 1) * 8])
        assert global_batch == set(ranks[0][step * 4 : (step + 1) * 4]) | set(ranks[1][step * 4 : (step + 1) * 4])


def test_sampler_resumes_after_the_consumed_batches():
    dataset = list(range(30))
    sampler = KeyedSampler(dataset, batch_size=5, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.batches_done = 3
    state = sampler.state_dict()
    resumed = KeyedSampler(dataset, batch_size=5, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    assert list(resumed) == full[15:]
    resumed.set_epoch(3)
    assert len(list(resumed)) == 30, "the following epoch is whole again"
    # a checkpoint written at the end of an epoch resumes with the next epoch, from its start
    at_end = KeyedSampler(dataset, batch_size=5, seed=1)
    at_end.load_state_dict({"epoch": 2, "batches_done": 6})
    at_end.set_epoch(3)
    nxt = KeyedSampler(dataset, batch_size=5, seed=1)
    nxt.set_epoch(3)
    assert list(at_end) == list(nxt)


def test_rng_state_round_trip():
    state = capture_rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    restore_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_keyed_rng_seeds_torch_python_and_numpy_and_restores_them():
    import random

    import numpy as np

    from sslvit.seeding import keyed_rng

    def draw():
        return torch.rand(2).tolist(), random.random(), random.gauss(0, 1), np.random.rand(), np.random.choice(9)

    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    outside = draw()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    with keyed_rng(2**62 + 7):
        first = draw()
    assert draw() == outside, "the caller's streams continue as if nothing happened"
    with keyed_rng(2**62 + 7):
        assert draw() == first
    with keyed_rng(2**62 + 8):
        assert all(a != b for a, b in zip(draw(), first, strict=True))
