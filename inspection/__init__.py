"""The read-side room: `longctx inspect` looks at what the jobs and the trainer wrote (stats, one row
decoded, rejects, training curves) and draws it. Reads curation's formats; never runs a pipeline."""
