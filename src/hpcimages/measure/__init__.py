"""Stage 4, measure: the benchmark runner, the results store (ResultRow) and the tables and plots."""
