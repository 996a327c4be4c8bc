"""The four MUSDB18 sources and the time grid shared by labels and the detector.

Order everywhere is ``drums, bass, other, vocals`` (index 0..3).
"""

SOURCES: tuple[str, ...] = ("drums", "bass", "other", "vocals")

# Label windows and detector output frames share one grid (SPEC.md): a window of
# 0.64 s every 64 ms.  At the detector's 16 kHz input this is 10240 samples every
# 1024 samples, i.e. 40 scattering frames of 256 samples every 4 frames.
WINDOW_S: float = 0.64
HOP_S: float = 0.064
FEATURE_RATE: int = 16_000  # Hz, detector input (mono)


def window_samples(sample_rate: int) -> tuple[int, int]:
    """Return (window, hop) in samples at ``sample_rate`` Hz for the shared grid."""
    return round(WINDOW_S * sample_rate), round(HOP_S * sample_rate)


def n_windows(n_samples: int, sample_rate: int) -> int:
    """Number of grid windows for a signal of ``n_samples`` samples.

    Window k spans samples ``[k * hop, k * hop + window)``.  A signal shorter than one
    window still gets one window (zero-padded on the right), so every track has at
    least one frame; an empty signal has none.
    """
    if n_samples <= 0:
        return 0
    window, hop = window_samples(sample_rate)
    return max(1, (n_samples - window) // hop + 1)


def window_start_s(index, hop_s: float = HOP_S):
    """Start time in seconds of window ``index`` (scalar or numpy array)."""
    return index * hop_s
