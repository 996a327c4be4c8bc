"""The four MUSDB18 sources, the time grid and the volume levels shared by every stage.

Order everywhere is ``drums, bass, other, vocals`` (index 0..3).
"""

SOURCES: tuple[str, ...] = ("drums", "bass", "other", "vocals")

# Label windows and detector output frames share one grid (paper section 4.1): a window of
# 0.64 s every 64 ms.  At the detector's 16 kHz input this is 10240 samples every
# 1024 samples, i.e. 40 scattering frames of 256 samples every 4 frames.
WINDOW_MS: int = 640
HOP_MS: int = 64
WINDOW_S: float = WINDOW_MS / 1000
HOP_S: float = HOP_MS / 1000
FEATURE_RATE: int = 16_000  # Hz, detector input (mono)
FEATURE_FRAME_SAMPLES: int = 256  # samples per scattering frame at FEATURE_RATE (16 ms; Kymatio's T)
FRAMES_PER_WINDOW: int = WINDOW_MS * FEATURE_RATE // 1000 // FEATURE_FRAME_SAMPLES  # 40 frames per 0.64 s window
FRAMES_PER_HOP: int = HOP_MS * FEATURE_RATE // 1000 // FEATURE_FRAME_SAMPLES  # 4 frames per 64 ms hop

# Relative volume levels V_i in dB (paper section 4.1): 0..-10 clear, -10..-20 whisper,
# -20..-30 almost silent, below -30 perceptually zero.
LABEL_SILENT_DB: float = -13.0  # detector training label: silent when V_i <= -13 dB (the paper's sign is a typo)
TRULY_SILENT_DB: float = -20.0  # calibration target and ground-truth "truly silent": V_i <= -20 dB
INAUDIBLE_DB: float = -30.0  # "perceptually zero"


def window_samples(sample_rate: int) -> tuple[int, int]:
    """Return (window, hop) in whole samples at ``sample_rate`` Hz (hop rounded).

    At 44.1 kHz the hop is 2822.4 samples: use :func:`window_starts` for exact starts.
    """
    return round(WINDOW_S * sample_rate), round(HOP_S * sample_rate)


def n_windows(n_samples: int, sample_rate: int) -> int:
    """Number of grid windows for a signal of ``n_samples`` samples at ``sample_rate`` Hz.

    Window k spans ``[k * 64 ms, k * 64 ms + 640 ms)``; it is counted when it ends within
    the signal (exact integer arithmetic, so 16 kHz and 44.1 kHz copies of one signal agree
    up to resampling's rounding).  A signal shorter than one window still gets one window
    (zero-padded on the right), so every track has at least one frame; an empty one has none.
    """
    if n_samples <= 0:
        return 0
    return max(1, (n_samples * 1000 - WINDOW_MS * sample_rate) // (HOP_MS * sample_rate) + 1)


def window_starts(count: int, sample_rate: int):
    """Start sample of windows ``0..count-1`` at ``sample_rate`` Hz (nearest sample), int64 array."""
    import numpy as np

    return (np.arange(count, dtype=np.int64) * HOP_MS * sample_rate + 500) // 1000


def window_start_s(index, hop_s: float = HOP_S):
    """Start time in seconds of window ``index`` (scalar or numpy array)."""
    return index * hop_s
