"""PyAV decoding: fidelity per codec, video containers, .stem.mp4 sets, bad files, no ffmpeg anywhere.

Every compressed file is encoded here with PyAV's encoders from a known signal and decoded
back.  Tolerance: FFmpeg removes each codec's encoder delay itself (LAME/Xing header for MP3,
pre-skip for Opus, the MP4 edit list for AAC), so the decoded samples are compared with the
source at lag 0, sample for sample; a perceptual codec at 128-192 kbit/s keeps tones to
about 30 dB (MP3) - 42 dB (Opus) signal-to-error ratio, so 25 dB is required (an offset of a
single sample or a lost frame gives less than 10 dB on these signals).  WMA carries no
delay information: it is compared after aligning by cross-correlation.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures_media import CODECS, encode_as, encode_audio, encode_video_only, tones
from scipy.signal import correlate

from pipeline.audio import io as audio
from pipeline.audio import pyav
from pipeline.corpora import stemset
from pipeline.sources import SOURCES

REPO = Path(__file__).resolve().parents[1]
MIN_SNR_DB = 25.0
EDGE = 2048  # samples left out at both ends (the codecs' start-up and tail transients)


def snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Signal-to-error ratio in dB of ``decoded`` vs ``reference`` ``(channels, n)``, away from the edges."""
    n = min(reference.shape[1], decoded.shape[1])
    ref, err = reference[:, EDGE:n - EDGE], (decoded[:, :n] - reference[:, :n])[:, EDGE:n - EDGE]
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum(err.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """One 2 s stereo file per codec of CODECS, with the signal it was encoded from."""
    root = tmp_path_factory.mktemp("media")
    made = {}
    for kind, (_, _, rate) in CODECS.items():
        signal = tones(rate, 2.0)
        made[kind] = (encode_as(root / f"t.{kind}", signal, kind), signal, rate)
    return made


# --------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("kind,codec", [("mp3", "mp3"), ("m4a", "aac"), ("opus", "opus")])
def test_decoded_samples_match_the_source_at_lag_zero(media, kind, codec):
    path, signal, rate = media[kind]
    decoded, got_rate = audio.load(path)
    assert got_rate == rate and decoded.shape[0] == 2 and decoded.dtype == np.float32
    assert snr_db(signal, decoded) > MIN_SNR_DB
    shifted = np.concatenate([np.zeros((2, 1), np.float32), decoded], axis=1)
    assert snr_db(signal, shifted) < snr_db(signal, decoded) - 10  # lag 0 is the alignment
    padding = decoded.shape[1] - signal.shape[1]
    assert padding == 0 if kind != "m4a" else 0 <= padding < 2048  # AAC keeps its last frame's padding
    info = audio.probe(path)
    assert (info.sample_rate, info.channels, info.codec, info.streams) == (rate, 2, codec, 1)
    assert abs(info.frames - signal.shape[1]) <= 1024  # the container's duration, not a decode pass


def test_wma_decodes_after_aligning_its_delay(media):
    path, signal, rate = media["wma"]
    decoded, got_rate = audio.load(path)
    assert got_rate == rate and decoded.shape[0] == 2
    lag = int(np.argmax(correlate(decoded[0], signal[0], mode="full", method="fft"))) - (signal.shape[1] - 1)
    assert abs(lag) < 4096
    aligned = decoded[:, lag:] if lag >= 0 else np.concatenate([np.zeros((2, -lag), np.float32), decoded], axis=1)
    assert snr_db(signal, aligned) > MIN_SNR_DB
    assert audio.probe(path).codec == "wmav2"


@pytest.mark.parametrize("kind", ["mp3", "m4a", "opus", "wma"])
def test_block_reads_equal_a_whole_read_and_spans_are_slices(media, kind):
    path, _, _ = media[kind]
    whole, _ = audio.load(path)
    for block_frames in (1, 1000, 1152, 1 << 16):
        blocks = list(audio.stream(path, block_frames=block_frames))
        assert all(b.shape[1] == block_frames for b in blocks[:-1]) and 0 < blocks[-1].shape[1] <= block_frames
        np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole)
    span = np.concatenate(list(audio.stream(path, block_frames=700, start=3001, frames=20000)), axis=1)
    np.testing.assert_array_equal(span, whole[:, 3001:23001])
    resampled = np.concatenate(list(audio.stream(path, block_frames=999, sample_rate=16000, mono=True)), axis=1)
    np.testing.assert_array_equal(resampled, audio.load(path, sample_rate=16000, mono=True)[0])


def test_mp3_and_opus_that_libsndfile_opens_go_to_pyav(tmp_path):
    signal = tones(44100, 2.0)
    path = tmp_path / "t.mp3"
    sf.write(path, signal.T, 44100, format="MP3", subtype="MPEG_LAYER_III")
    assert sf.info(str(path)).format == "MP3"  # libsndfile opens it, and would decode blocks wrongly
    with audio.open_stream(path, block_frames=4096) as opened:
        assert opened.decoder == "pyav"
        np.testing.assert_array_equal(np.concatenate(list(opened), axis=1), audio.load(path)[0])
    with audio.open_stream(media_path := encode_as(tmp_path / "t.opus", tones(48000, 1.0), "opus")) as opened:
        assert opened.decoder == "pyav" and opened.file_rate == 48000
    assert audio.probe(media_path).codec == "opus"
    wav = tmp_path / "t.wav"
    sf.write(wav, signal.T, 44100)
    with audio.open_stream(wav) as opened:
        assert opened.decoder == "soundfile"


# --------------------------------------------------------------------------- containers


def test_a_video_container_yields_its_audio_stream(tmp_path):
    signal = tones(44100, 2.0)
    path = encode_audio(tmp_path / "clip.mp4", [signal], 44100, "aac", "mp4", video=True)
    with pyav.open_container(path) as container:  # the video stream comes first in the file
        assert [s.type for s in container.streams] == ["video", "audio"]
    decoded, rate = audio.load(path)
    assert rate == 44100 and snr_db(signal, decoded) > MIN_SNR_DB
    np.testing.assert_array_equal(np.concatenate(list(audio.stream(path, block_frames=3000)), axis=1), decoded)
    info = audio.probe(path)
    assert (info.codec, info.channels, info.streams) == ("aac", 2, 1)


@pytest.fixture(scope="module")
def stem_mp4(tmp_path_factory):
    """A MUSDB18-style .stem.mp4: mixture then drums, bass, other, vocals, each its own AAC stream."""
    root = tmp_path_factory.mktemp("musdb")
    rate, n = 44100, 44100 * 2
    t = np.arange(n) / rate
    sources = np.stack([np.stack([0.2 * np.sin(2 * np.pi * f * t + c) * (0.7 + 0.3 * np.sin(2 * np.pi * 0.5 * t))
                                  for c in range(2)]) for f in (110.0, 55.0, 660.0, 440.0)]).astype(np.float32)
    mixture = sources.sum(axis=0)
    for split, name in (("train", "Leaf - Summerghost"), ("train", "Some - Training Song"), ("test", "A - Test")):
        (root / split).mkdir(exist_ok=True)
        encode_audio(root / split / f"{name}.stem.mp4", [mixture, *sources], rate, "aac", "mp4")
    return root, mixture, sources, rate


def test_stem_mp4_is_decoded_stream_by_stream(stem_mp4):
    root, mixture, sources, rate = stem_mp4
    path = root / "test" / "A - Test.stem.mp4"
    info = audio.probe(path)
    assert (info.streams, info.codec, info.sample_rate) == (5, "aac", rate)
    for index, reference in enumerate([mixture, *sources]):
        decoded, got_rate = audio.load(path, audio_stream=index)
        assert got_rate == rate and snr_db(reference, decoded) > MIN_SNR_DB
        blocks = list(audio.stream(path, block_frames=5000, audio_stream=index))
        np.testing.assert_array_equal(np.concatenate(blocks, axis=1), decoded)
    with pytest.raises(audio.AudioError, match="holds 5 audio stream"):
        audio.load(path, audio_stream=5)


def test_a_stem_mp4_set_reads_without_musdb(stem_mp4):
    root, mixture, sources, rate = stem_mp4
    assert [t.name for t in stemset.list_tracks(root, "valid")] == ["Leaf - Summerghost"]  # official split
    assert [t.name for t in stemset.list_tracks(root, "train")] == ["Some - Training Song"]
    (track,) = stemset.list_tracks(root, "test")
    stems, got_rate = stemset.load_stems(track)
    assert got_rate == rate and stems.shape[:2] == (len(SOURCES), 2)
    for j in range(len(SOURCES)):
        assert snr_db(sources[j], stems[j]) > MIN_SNR_DB
    mix, _ = stemset.load_mixture(track, sample_rate=22050, mono=True)
    expected = audio.load(track.stem_file, sample_rate=22050, mono=True, audio_stream=0)[0]
    np.testing.assert_array_equal(mix, expected)
    assert "musdb" not in sys.modules and "stempeg" not in sys.modules


def test_a_stem_mp4_without_five_streams_is_refused(tmp_path):
    (tmp_path / "test").mkdir()
    encode_audio(tmp_path / "test" / "short.stem.mp4", [tones(44100, 1.0)] * 3, 44100, "aac", "mp4")
    (track,) = stemset.list_tracks(tmp_path, "test")
    with pytest.raises(audio.AudioError, match="holds 3 audio stream.*needs 5"):
        stemset.load_stems(track)


def test_the_copied_validation_list_is_musdbs():
    import yaml  # in the test extras: a missing one fails
    try:
        files = importlib.metadata.files("musdb") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("musdb is not installed (it comes with museval)")
    (config,) = [f for f in files if str(f).endswith("configs/mus.yaml")]  # read, never imported
    with open(config.locate()) as fh:
        setup = yaml.safe_load(fh)
    assert stemset.MUSDB_VALIDATION_TRACKS == set(setup["validation_tracks"])
    assert stemset.STEM_STREAMS == setup["stem_ids"]


# --------------------------------------------------------------------------- bad files


def _cut(path: Path, fraction: float, name: str) -> Path:
    data = path.read_bytes()
    out = path.with_name(name)
    out.write_bytes(data[:int(len(data) * fraction)])
    return out


def _damaged(path: Path, name: str) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 3:len(data) // 3 + 4000] = np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()
    out = path.with_name(name)
    out.write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    signal = tones(44100, 4.0)
    m4a = encode_as(root / "good.m4a", signal, "m4a")
    faststart = encode_as(root / "faststart.m4a", signal, "m4a", options={"movflags": "faststart"})
    mp3 = encode_as(root / "good.mp3", signal, "mp3")
    opus = encode_as(root / "good.opus", tones(48000, 4.0), "opus")
    (root / "empty.m4a").write_bytes(b"")
    (root / "text.m4a").write_text("Track list\n1. Intro\n" * 40)
    (root / "text.mp3").write_text("This is not an MP3 file.\n" * 40)
    return {
        "empty": (root / "empty.m4a", ("empty", "0 bytes"), "empty"),
        "not audio (m4a)": (root / "text.m4a", ("not an audio file",), "not audio"),
        "not audio (mp3)": (root / "text.mp3", ("not an audio file",), "not audio"),
        "video without audio": (encode_video_only(root / "video only.mp4"), ("no audio stream",), "no audio stream"),
        "m4a cut (index at the end)": (_cut(m4a, 0.6, "cut.m4a"), ("truncated", "moov"), "truncated or corrupt"),
        "m4a cut (index first)": (_cut(faststart, 0.5, "cut faststart.m4a"), ("truncated",), "truncated or corrupt"),
        "opus cut inside its header": (_cut(opus, 0.01, "cut.opus"), ("truncated",), "truncated or corrupt"),
        "mp3 with damaged frames": (_damaged(mp3, "damaged.mp3"), ("corrupt", "decoding failed after"),
                                    "truncated or corrupt"),
    }


@pytest.mark.parametrize("case", ["empty", "not audio (m4a)", "not audio (mp3)", "video without audio",
                                  "m4a cut (index at the end)", "m4a cut (index first)",
                                  "opus cut inside its header", "mp3 with damaged frames"])
def test_bad_files_get_plain_reasons(bad_files, case):
    path, words, kind = bad_files[case]
    with pytest.raises(audio.AudioError) as raised:
        audio.load(path)
    reason = str(raised.value)
    for word in words:
        assert word in reason, reason
    assert raised.value.kind == kind, (raised.value.kind, reason)
    assert "ffmpeg" not in reason and "ffprobe" not in reason


def test_a_cut_mp3_decodes_to_what_it_holds(tmp_path):
    """An MP3's length is not indexed; a cut one decodes cleanly to its remaining audio."""
    signal = tones(44100, 4.0)
    cut = _cut(encode_as(tmp_path / "t.mp3", signal, "mp3"), 0.5, "half.mp3")
    decoded, _ = audio.load(cut)
    assert 1.5 * 44100 < decoded.shape[1] < 2.5 * 44100
    assert snr_db(signal[:, :decoded.shape[1] - 2000], decoded[:, :decoded.shape[1] - 2000]) > MIN_SNR_DB


def test_a_wav_has_one_stream(tmp_path):
    sf.write(tmp_path / "t.wav", tones(8000, 0.5).T, 8000)
    with pytest.raises(audio.AudioError, match="holds 1 audio stream"):
        audio.load(tmp_path / "t.wav", audio_stream=1)
    with pytest.raises(audio.AudioError, match="holds 1 audio stream"):
        audio.probe(tmp_path / "t.wav", audio_stream=2)


# --------------------------------------------------------------------------- decoder identity


def test_decoder_fingerprint_names_the_libraries():
    import av
    import soxr

    fingerprint = audio.decoder_fingerprint()
    assert fingerprint["soundfile"] == sf.__version__ and fingerprint["libsndfile"] == sf.__libsndfile_version__
    assert fingerprint["av"] == av.__version__ and fingerprint["soxr"] == soxr.__version__
    assert fingerprint["ffmpeg"] == str(av.ffmpeg_version_info)
    assert fingerprint["libavcodec"] == ".".join(map(str, av.library_versions["libavcodec"]))
    fingerprint["av"] = "changed"
    assert audio.decoder_fingerprint()["av"] == av.__version__  # a copy each time


def test_manifests_and_decoding_stage_keys_hold_the_decoders(tmp_path, monkeypatch):
    from pipeline.storage import outputs
    from tasks.base import Stage

    manifest = outputs.write_manifest(tmp_path, "s", "k", {}, {})
    assert manifest["decoders"] == audio.decoder_fingerprint()
    assert "av" in manifest["packages"] and "librosa" not in manifest["packages"]

    class Decoding(Stage):
        stage_name = "decoding_test"
        decodes_audio = True

    class Plain(Stage):
        stage_name = "plain_test"

    def key(task: Stage) -> str:  # Stage.key is cached per (Luigi-cached) instance
        return outputs.stage_key(task.stage_name, task.key_params(), task.input_keys())

    before = key(Decoding()), key(Plain())
    assert before[0] == Decoding().key
    assert Decoding().input_keys()["decoders"] == outputs.stable_hash(audio.decoder_fingerprint())
    assert "decoders" not in Plain().input_keys()
    changed = {**audio.decoder_fingerprint(), "libavcodec": "0.0.0"}
    monkeypatch.setattr("tasks.base.decoder_fingerprint", lambda: changed)
    assert key(Decoding()) != before[0] and key(Plain()) == before[1]


def test_the_stages_that_decode_audio_say_so():
    from tasks.audit import Audit
    from tasks.catalog import ScanCatalog
    from tasks.detector import DetectCatalog, DetectStems, TrainDetector
    from tasks.evaluate import Evaluate
    from tasks.extract import ExtractShard
    from tasks.features import CatalogFeatures, StemFeatures
    from tasks.labels import Labels
    from tasks.separator import TrainSeparator

    for task in (Labels, StemFeatures, CatalogFeatures, ExtractShard, TrainSeparator, Evaluate, Audit):
        assert task.decodes_audio, task.__name__
    for task in (ScanCatalog, TrainDetector, DetectStems, DetectCatalog):  # checksums, features, models
        assert not task.decodes_audio, task.__name__


# --------------------------------------------------------------------------- no ffmpeg anywhere

NO_FFMPEG_CHILD = textwrap.dedent(r"""
    import shutil, sys
    import numpy as np
    assert shutil.which("ffmpeg") is None and shutil.which("ffprobe") is None, "ffmpeg is on the PATH"
    from pipeline.audio import io as audio
    from pipeline.corpora import stemset
    from pipeline.separation.evaluation import score_track
    from pipeline.sources import SOURCES
    for path in sys.argv[2:]:
        whole, rate = audio.load(path)
        blocks = list(audio.stream(path, block_frames=1000, sample_rate=16000, mono=True))
        assert whole.shape[1] > rate and len(blocks) > 5, path
        print(path, rate, whole.shape, audio.probe(path).codec)
    (track,) = stemset.list_tracks(sys.argv[1], "test")
    references = stemset.load_stems(track)[0][:, :1]  # one channel: museval's solves are 8x cheaper
    estimates = references + 0.05 * np.random.default_rng(0).standard_normal(references.shape)
    rows = score_track(track.name, references, estimates, 44100)
    assert all(np.isfinite(r["sdr"]) for r in rows), rows
    assert "musdb" not in sys.modules and "stempeg" not in sys.modules
    print("sdr", " ".join(f"{r['source']}={r['sdr']:.2f}" for r in rows))
""")


@pytest.mark.slow
def test_decoding_and_evaluation_run_without_ffmpeg_on_the_path(media, stem_mp4, tmp_path):
    """PATH holds only an empty folder, so no ffmpeg or ffprobe program can be found."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": str(REPO)}
    paths = [str(media[kind][0]) for kind in ("mp3", "m4a", "opus", "wma")]
    proc = subprocess.run([sys.executable, "-c", NO_FFMPEG_CHILD, str(stem_mp4[0]), *paths], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" 44100 ") + proc.stdout.count(" 48000 ") == 4
    assert proc.stdout.splitlines()[-1].startswith("sdr drums=")


MUSEVAL_CHILD = textwrap.dedent(r"""
    import sys
    import numpy as np
    import museval  # imports musdb -> stempeg, which only checks that ffmpeg and ffprobe exist
    from pipeline.separation.evaluation import bss_eval_v4_sdr
    rng = np.random.default_rng(0)
    references = rng.standard_normal((3, 2, 3 * 8000))
    estimates = references + np.array([0.1, 0.5, 1.5])[:, None, None] * rng.standard_normal(references.shape)
    expected = museval.evaluate(np.transpose(references, (0, 2, 1)), np.transpose(estimates, (0, 2, 1)),
                                win=8000, hop=8000, mode="v4")[0]
    got = bss_eval_v4_sdr(references, estimates, 8000, 8000)
    assert got.shape == expected.shape == (3, 3), (got.shape, expected.shape)
    np.testing.assert_array_equal(got, expected)
    print("equal", np.round(got.mean(axis=1), 2).tolist())
""")


@pytest.mark.slow
def test_sdr_equals_museval_evaluate(tmp_path):
    """museval's own entry point, imported where stempeg's PATH check passes: stand-in ffmpeg and
    ffprobe programs that are never run (they would exit 1)."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for name in ("ffmpeg", "ffprobe"):
        (stand_ins / name).write_text("#!/bin/sh\nexit 1\n")
        (stand_ins / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stand_ins}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", MUSEVAL_CHILD], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("equal")


def test_no_code_runs_or_needs_an_ffmpeg_program():
    words = ("import musdb", "import stempeg", "import librosa", "import museval", '["ffmpeg"', '["ffprobe"',
             'which("ffmpeg")', 'which("ffprobe")')
    for folder in ("pipeline", "classifiers", "tasks"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for word in words:
                assert word not in text, f"{path.relative_to(REPO)} has {word}"
