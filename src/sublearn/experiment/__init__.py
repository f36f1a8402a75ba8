"""The experiment: its config (one section per concern), the design (arms, comparisons,
presets), the pipeline (stage graph, artifact keys, model lifetimes), sweeps and the cost
estimate. It composes the safety, stages and models layers below it."""
