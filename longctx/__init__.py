"""The front door: the `longctx` command line (`longctx.cli`, also `python -m longctx`). It parses
arguments and hands each command to its room: data jobs to `pipelines`, training to `training`,
evaluation to `evals`, looking at outputs to `inspection`."""
