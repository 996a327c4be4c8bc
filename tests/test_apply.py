"""Applying a separator: overlap-add (whole and streamed alike), and ``silentmine separate`` on a
track of known stems: one FLAC per source at the file's rate, channels and length, streamed
equal to whole, bounded memory on a long file, a corrupt file refused with its reason, and no
half-written output."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.audio import io as audio
from pipeline.separation import apply
from pipeline.separation.apply import (
    SeparateError,
    StreamingOverlapAdd,
    crossfade_weights,
    overlap_add,
    resolve_run,
    separate_files,
    separate_track,
)
from pipeline.separation.demucs import Demucs, DemucsConfig
from pipeline.separation.registry import build_model, checkpoint_fields
from pipeline.sources import SOURCES
from pipeline.storage import checkpoints

RATE = 8000
REPO = Path(__file__).resolve().parents[1]


def test_crossfade_weights_are_positive_triangles():
    for n in (1, 2, 7, 8):
        w = crossfade_weights(n)
        assert w.shape == (n,) and torch.all(w > 0)
        assert torch.equal(w, w.flip(0))


@pytest.mark.parametrize("length,segment,overlap", [(1000, 300, 100), (1000, 300, 0), (299, 300, 50),
                                                    (1234, 256, 255), (5000, 1000, 250)])
def test_overlap_add_of_identity_reconstructs_the_input(length, segment, overlap):
    mix = torch.randn(2, length)
    calls = []

    def identity(chunks):  # (B, C, segment) -> (B, 1, C, segment)
        assert chunks.shape[-1] == segment
        calls.append(chunks.shape[0])
        return chunks[:, None]

    out = overlap_add(identity, mix, segment, overlap, batch_size=3)
    assert out.shape == (1, 2, length)
    torch.testing.assert_close(out[0], mix, rtol=1e-5, atol=1e-6)
    assert sum(calls) == 1 + max(0, math.ceil((length - segment) / (segment - overlap)))


def test_overlap_add_blends_segments_with_the_crossfade():
    # A "model" that outputs its segment's mean: segments [0, 150) -> 1/3 and [50, 200) -> 2/3.
    mix = torch.cat([torch.zeros(1, 100), torch.ones(1, 100)], dim=1)
    out = overlap_add(lambda c: c.mean(dim=-1, keepdim=True).expand_as(c)[:, None], mix, 150, 100)[0, 0]
    torch.testing.assert_close(out[:50], torch.full((50,), 1 / 3))
    torch.testing.assert_close(out[150:], torch.full((50,), 2 / 3))
    # At t = 100: weight 50 (falling edge of the first triangle), 51 (rising edge of the second).
    assert out[100].item() == pytest.approx((50 / 3 + 51 * 2 / 3) / 101)
    assert torch.all(out[1:] >= out[:-1] - 1e-6)  # a monotone crossfade, no jump


def test_separate_track_keeps_length_and_shape():
    torch.manual_seed(0)
    model = Demucs(DemucsConfig(channels=4, depth=2, lstm_layers=1, sample_rate=RATE))
    mix = np.random.default_rng(0).normal(size=(2, 2 * RATE + 123)).astype(np.float32)
    out = separate_track(model, mix, segment_s=0.5, overlap_s=0.1)
    assert out.shape == (4, 2, 2 * RATE + 123) and np.isfinite(out).all()


def _segment_fn(chunks: torch.Tensor) -> torch.Tensor:
    """A context-dependent stand-in for a model: ``(B, C, T)`` -> ``(B, 2, C, T)`` (each output
    depends on the whole segment, so misplaced segments or weights would show)."""
    return torch.stack([chunks * chunks.mean(dim=-1, keepdim=True), chunks.flip(-1)], dim=1)


@pytest.mark.parametrize("length,segment,overlap,batch", [(1000, 300, 100, 2), (299, 300, 50, 4),
                                                          (5000, 1000, 250, 3), (4000, 1000, 0, 1),
                                                          (3388, 1280, 320, 4)])  # a last full batch
def test_streamed_overlap_add_equals_the_whole(length, segment, overlap, batch):
    mix = torch.randn(2, length)
    whole = overlap_add(_segment_fn, mix, segment, overlap, batch)
    for seed in range(3):  # blocks of random sizes, single samples among them
        sizes = np.random.default_rng(seed).integers(1, 700, size=length)
        bounds = np.minimum(np.cumsum(np.concatenate([[0], sizes])), length)
        stream = StreamingOverlapAdd(_segment_fn, segment, overlap, batch)
        pieces = [stream.push(mix[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        pieces.append(stream.finish())
        streamed = torch.cat([p for p in pieces if p is not None], dim=-1)
        assert streamed.shape == whole.shape
        torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-6)
        held = segment + batch * (segment - overlap)
        assert stream.out.shape[-1] <= held  # what it holds is bounded by the segments, not the signal
    with pytest.raises(RuntimeError, match="ended"):
        stream.push(mix[:, :10])


# ---------------------------------------------------------------------------- the command
def _known_track(path: Path, rate: int, channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A mixture of four known stems written to ``path`` (16-bit WAV); returns the stems
    ``(4, channels, samples)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    one = np.stack([0.1 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0.5),
                    0.2 * np.sin(2 * np.pi * 55 * t), 0.05 * rng.standard_normal(t.size),
                    0.1 * np.sin(2 * np.pi * 440 * t + 3 * np.sin(2 * np.pi * 5 * t))])
    stems = np.repeat(one[:, None], channels, axis=1).astype(np.float32)
    sf.write(path, stems.sum(0).T, rate, subtype="PCM_16")
    return stems


def _checkpoint(path: Path, audio_channels: int = 2, rate: int = RATE) -> Path:
    """A tiny TasNet whose estimates sum to its input (mixture consistency), saved as ``path``."""
    torch.manual_seed(0)
    model = build_model("tasnet", dict(filters=16, hidden=16, lstm_layers=1, frame=40, hop=20, consistency=True,
                                       audio_channels=audio_channels, sample_rate=rate))
    checkpoints.save(path, checkpoint_fields(model))
    return path


def _whole(checkpoint: Path, path: Path, segment_s: float, overlap_s: float) -> np.ndarray:
    """The stems of ``path`` separated in one piece (loaded whole, :func:`separate_track`), at the
    file's rate and channels: ``(4, channels, samples)``."""
    from pipeline.separation.registry import load_model

    model = load_model(checkpoint)
    info = audio.probe(path)
    mix, _ = audio.load(path, sample_rate=model.config.sample_rate)
    estimates = separate_track(model, audio.match_channels(mix, model.config.audio_channels), segment_s, overlap_s)
    out = [audio.match_channels(audio.resample(e, model.config.sample_rate, info.sample_rate), info.channels)
           for e in estimates]
    return np.stack([np.pad(o, ((0, 0), (0, max(0, info.frames - o.shape[1]))))[:, :info.frames] for o in out])


@pytest.mark.parametrize("file_rate,file_channels", [(RATE, 2), (22_050, 1)])
def test_separate_writes_one_flac_per_source_streamed_equal_to_whole(tmp_path, file_rate, file_channels):
    song = tmp_path / "song.wav"
    stems = _known_track(song, file_rate, file_channels, seconds=2.3)
    checkpoint = _checkpoint(tmp_path / "best.pt")
    report = separate_files([song], checkpoint, tmp_path / "out", segment_s=0.25, overlap_s=0.05, progress=False)
    assert report.exit_status == 0 and not report.refused
    written = {name: sf.read(tmp_path / "out" / "song" / f"{name}.flac", always_2d=True) for name in SOURCES}
    for name, (wav, rate) in written.items():
        info = sf.info(tmp_path / "out" / "song" / f"{name}.flac")
        assert (rate, wav.shape, info.format, info.subtype) == (file_rate, (stems.shape[-1], file_channels), "FLAC",
                                                                 "PCM_24"), name
    estimates = np.stack([written[name][0].T for name in SOURCES])
    # streamed in 0.25 s segments, block by block, equal to the whole track separated at once
    np.testing.assert_allclose(estimates, _whole(checkpoint, song, 0.25, 0.05), rtol=0, atol=1e-4)
    mixture = sf.read(song, always_2d=True)[0].T
    if file_rate == RATE:  # no resampling: the consistent estimates add up to the known mixture
        np.testing.assert_allclose(estimates.sum(0), mixture, rtol=0, atol=1e-4)
        assert np.abs(mixture - stems.sum(0)).max() < 1e-4  # (16-bit)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["song"]  # nothing else, no temporaries
    assert report.separated[0].seconds == pytest.approx(2.3, abs=1e-3)


def test_separate_refuses_a_corrupt_file_with_its_reason_and_goes_on(tmp_path, capsys):
    from tasks.cli import main

    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    _known_track(good, RATE, 2, seconds=1.0)
    bad.write_bytes(b"RIFF\x00\x10\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    with pytest.raises(audio.AudioError) as reason:
        audio.probe(bad)
    checkpoint = _checkpoint(tmp_path / "best.pt")
    assert main(["separate", str(bad), str(good), "--run", str(checkpoint), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: refused: {reason.value}" in out and str(reason.value)
    assert f"{good}: 4 stems of 1.0 s" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good"]
    # a run that is not a separator: a clear error, nothing written
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert main(["separate", str(good), "--run", str(tmp_path / "notes.pt"), "--out", str(tmp_path / "o2")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main(["separate", str(good), "--run", "0123abcd", "--out", str(tmp_path / "o3")]) == 2
    assert "no separator '0123abcd'" in capsys.readouterr().err
    with pytest.raises(SeparateError, match="several files"):
        separate_files([good, tmp_path / "x" / "good.flac"], checkpoint, tmp_path / "o4")


def test_a_run_is_a_key_a_prefix_a_folder_or_a_checkpoint(tmp_path):
    root = tmp_path / "data"
    for key in ("abcdef0123456789", "abcdef9876543210"):
        _checkpoint(root / "separator" / key / "best.pt")
    best = root / "separator" / "abcdef0123456789" / "best.pt"
    assert resolve_run("abcdef0123456789", root) == best == resolve_run("abcdef0", root)
    assert resolve_run(best.parent, root) == best == resolve_run(best, root)
    with pytest.raises(SeparateError, match="matches 2 separators"):
        resolve_run("abcdef", root)
    with pytest.raises(SeparateError, match="at least 6 characters"):
        resolve_run("abcde", root)


def test_a_killed_separation_leaves_no_stems_that_look_finished(tmp_path, monkeypatch):
    song = tmp_path / "long.wav"
    _known_track(song, RATE, 2, seconds=3.0)
    real = apply.separate_stream

    def killed(*args, **kwargs):
        stream = real(*args, **kwargs)
        yield next(stream)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(apply, "separate_stream", killed)
    with pytest.raises(KeyboardInterrupt):
        separate_files([song], _checkpoint(tmp_path / "best.pt"), tmp_path / "out", segment_s=0.25,
                       overlap_s=0.05, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


_MEASURE = textwrap.dedent("""
    import resource, sys
    from pipeline.separation.apply import separate_files
    report = separate_files([sys.argv[1]], sys.argv[2], sys.argv[3], progress=False)
    assert report.exit_status == 0, report.lines()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _peak_rss_kb(song: Path, checkpoint: Path, out: Path) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(song), str(checkpoint), str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return int(done.stdout.split()[-1])


def _write_long(path: Path, minutes: float) -> None:
    """A mono 8 kHz FLAC of ``minutes``, written in blocks of 10 s."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=RATE, channels=1, format="FLAC") as out:
        for _ in range(int(minutes * 6)):
            out.write((0.1 * rng.standard_normal(10 * RATE)).astype(np.float32))


@pytest.mark.slow
def test_memory_does_not_grow_with_the_files_length(tmp_path):
    checkpoint = tmp_path / "best.pt"
    torch.manual_seed(0)
    checkpoints.save(checkpoint, checkpoint_fields(build_model("demucs", dict(
        channels=2, depth=2, lstm_layers=0, audio_channels=1, sample_rate=RATE))))
    peaks = {}
    for minutes in (2, 20):
        _write_long(tmp_path / f"m{minutes}.flac", minutes)
        peaks[minutes] = _peak_rss_kb(tmp_path / f"m{minutes}.flac", checkpoint, tmp_path / f"out{minutes}")
        assert sf.info(tmp_path / f"out{minutes}" / f"m{minutes}" / "vocals.flac").frames == minutes * 60 * RATE
    # 18 more minutes are 8.6 M samples: 35 MB for each float32 copy of the mixture or of a stem
    # (a whole-track separation holds several); the streamed one holds a few segments.
    assert peaks[20] - peaks[2] < 15_000, peaks
