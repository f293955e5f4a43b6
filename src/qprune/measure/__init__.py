"""Measuring models: calibration data, block ablation with prefix reuse, scan, plan search, the
oracle checks of verify, perplexity and generations (evaluate), speed and memory (bench), and the
ideal costs a plan predicts (cost)."""
