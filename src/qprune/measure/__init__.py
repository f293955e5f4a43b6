"""Measuring models, writing no checkpoint: calibration data, block ablation with prefix reuse (two
engines behind one interface, `engine`), scan, plan search (a plan and its `report`), the oracle checks
of verify, perplexity and generations (evaluate), speed and memory (bench)."""
