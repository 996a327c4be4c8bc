"""Augmentations: what each one does to every (item, source), and mixture = sum of sources."""

import torch

from pipeline.separation.augment import Augment, FlipChannels, FlipSign, ShuffleSources, TimeShift, mixture_of

B, S, C, T = 6, 4, 2, 64


def _indexed() -> torch.Tensor:
    """x[b, s, c, t] = 10000 b + 1000 s + 100 c + t: every sample says where it came from."""
    b, s, c, t = torch.meshgrid(torch.arange(B), torch.arange(S), torch.arange(C), torch.arange(T), indexing="ij")
    return (10000 * b + 1000 * s + 100 * c + t).float()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_time_shift_crops_one_offset_per_source_shared_by_channels():
    x = _indexed()
    out = TimeShift(10, _gen())(x)
    assert out.shape == (B, S, C, T - 10)
    offsets = out[..., 0] - x[..., 0]  # (B, S, C)
    assert torch.equal(offsets[..., 0], offsets[..., 1])  # same shift for both channels
    assert offsets.min() >= 0 and offsets.max() <= 10
    assert len(offsets.unique()) > 1  # sources really are shifted differently
    expected = x[..., :1] + offsets[..., None] + torch.arange(T - 10)  # contiguous crops
    assert torch.equal(out, expected)


def test_flip_sign_per_source_and_per_channel():
    x = torch.randn(B, S, C, T)
    out = FlipSign(_gen())(x)
    ratio = out / x
    assert torch.all(ratio.abs() == 1)
    assert torch.equal(ratio, ratio[..., :1, :1].expand_as(ratio))  # one sign per (item, source)
    assert (ratio[..., 0, 0] < 0).any() and (ratio[..., 0, 0] > 0).any()
    per_channel = FlipSign(_gen(3), per_channel=True)(x) / x
    assert torch.equal(per_channel, per_channel[..., :1].expand_as(per_channel))
    assert (per_channel[..., 0, 0] != per_channel[..., 1, 0]).any()


def test_flip_channels_swaps_or_keeps_each_source():
    x = _indexed()
    out = FlipChannels(_gen())(x)
    kept = (out == x).all(dim=-1).all(dim=-1)
    swapped = (out == x.flip(2)).all(dim=-1).all(dim=-1)
    assert torch.all(kept ^ swapped)
    assert kept.any() and swapped.any()


def test_shuffle_sources_permutes_each_source_slot_over_the_batch():
    x = _indexed()
    out = ShuffleSources(_gen())(x)
    origin_item = (out[..., 0, 0] // 10000).long()  # (B, S): which item each slot came from
    origin_source = (out[..., 0, 0] % 10000 // 1000).long()
    assert torch.equal(origin_source, torch.arange(S).expand(B, S))  # drums stay drums
    for s in range(S):
        assert sorted(origin_item[:, s].tolist()) == list(range(B))  # a permutation of the batch
        assert torch.equal(out[:, s], x[origin_item[:, s], s])
    assert not torch.equal(origin_item, torch.arange(B)[:, None].expand(B, S))
    assert len({tuple(origin_item[:, s].tolist()) for s in range(S)}) > 1  # independent per source


def test_augment_is_seeded_and_mixture_is_the_sum_of_augmented_sources():
    x = torch.randn(B, S, C, T + 8)
    first = Augment(_gen(7), max_shift=8)(x)
    again = Augment(_gen(7), max_shift=8)(x)
    other = Augment(_gen(8), max_shift=8)(x)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (B, S, C, T)
    mix = mixture_of(first)
    assert torch.allclose(mix, first[:, 0] + first[:, 1] + first[:, 2] + first[:, 3])
    # Sign flips, channel swaps and shuffles move whole sources: each source slot keeps the
    # multiset of per-source energies of the (shifted) input.
    shifted = TimeShift(8, _gen(7))(x)
    energy_in = (shifted ** 2).sum(dim=(2, 3))
    energy_out = (first ** 2).sum(dim=(2, 3))
    for s in range(S):
        torch.testing.assert_close(energy_out[:, s].sort().values, energy_in[:, s].sort().values)


def test_without_shuffle_each_item_keeps_its_own_sources():
    x = torch.randn(B, S, C, T)
    out = Augment(_gen(1), max_shift=0, shuffle_sources=False)(x)
    # Each output source is a sign flip and/or channel swap of the same item's source.
    candidates = torch.stack([x, -x, x.flip(2), -x.flip(2)])
    match = (candidates == out).all(dim=-1).all(dim=-1).any(dim=0)
    assert match.all()


def test_augmented_windows_feed_every_registered_model():
    # The trainer's windows: the model's valid length plus the shift range; after TimeShift the
    # mixture is a valid input for every model and the targets trim to its output.
    from pipeline.separation.contract import center_trim
    from pipeline.separation.losses import LOSSES
    from pipeline.separation.registry import build_model, model_names

    tiny = {"demucs": dict(channels=4, depth=2, lstm_layers=1), "demucs2019": dict(channels=4, depth=2, lstm_layers=1),
            "tasnet": dict(filters=8, hidden=8, lstm_layers=1)}
    for name in model_names():
        torch.manual_seed(0)
        model = build_model(name, tiny[name])
        window, shift = model.valid_length(3000), 40
        sources = torch.randn(3, 4, 2, window + shift)
        augmented = Augment(_gen(1), shift)(sources)
        assert augmented.shape[-1] == window
        estimates = model(mixture_of(augmented))
        for loss in LOSSES.values():
            assert torch.isfinite(loss.fn(estimates, center_trim(augmented, estimates.shape[-1]))), name
