"""From detector probabilities to D_i: calibration, extraction, the D_i run, verify, audit, ground truth."""
