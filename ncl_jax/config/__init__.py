"""Configuration: every field and its default (base), the paper/official presets resolved once
per program (variants), the checks before any compute (validation), the recipes config files
share (recipes, experiments), what a resolved config builds (builders) and what
its model costs (model_cost)."""
