"""Audio files: decoding, streaming, probing and writing."""
