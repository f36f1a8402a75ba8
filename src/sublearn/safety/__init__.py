"""Safety: auditing data for a hidden trait and defending against it (the audit's methods,
the defences registry, divergence tokens), above the stages they use."""
