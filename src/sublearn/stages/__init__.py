"""Pipeline stages: the number-prompt grammar and the completion filter."""
