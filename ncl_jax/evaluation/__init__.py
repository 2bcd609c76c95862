"""Scoring a model on the evaluation split: per-class counts (evaluate), the analysis pass's
per-class and per-bin sums (analysis_pass), and every figure (plots). Reads no workdir."""
