"""Measuring guards: metrics, thresholds for a target recall, baselines, leave-one-source-out, plots."""
