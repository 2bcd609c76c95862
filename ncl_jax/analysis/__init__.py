"""Runs read back into tables and figures: the analysis of trained runs (analyze), one row per
setting over seeds (report), and logged curves compared (curves)."""
