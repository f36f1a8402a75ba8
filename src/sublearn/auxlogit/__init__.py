"""The auxiliary-logit toy of the subliminal-learning paper (Cloud et al. 2025).

A student MLP distilled only on the unused "auxiliary" logits of a digit classifier, and
only on noise images, learns to classify digits when it shares the teacher's initialisation.

Modules: `config` (the recipe and presets), `data` (digits, MNIST), `model` (a batched
population of MLPs), `train` (teachers, students, arms), `defence` (what a producer could do
to the channel), `experiment` (runs, sweeps, files), `defend` (transfer against defence
strength) and `cli` (the `sublearn auxlogit` command). Nothing heavy is imported here.
"""
