"""Analysis: statistics (intervals, paired tests, permutation tests, Holm), typed result
records, tables and plots. It knows nothing of models or stages."""
