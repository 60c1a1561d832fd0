"""Rules on metrics, logs and missing data; their incidents; the evaluator that steps them
and the runner of their actions."""
