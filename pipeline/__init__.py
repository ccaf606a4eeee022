"""moe-vae-pipeline: the library behind the DVC stages (stages/*.py are thin wrappers).

The data's journey, one subpackage each:
    data/        raw IDX files -> validated Parquet shards
    models/      the shared blocks and one module per model kind (models/kinds/)
    training/    the epoch step, the Ray Train worker loop and its driver, restarts
    evaluation/  clustering scores, test log-likelihood, pictures (the only label reader)
Around it:
    sweep/        Ray Tune over tune.space
    experiments/  presets (params/*.yaml) x their seeds -> runs -> one table
    cluster/      submitting the pipeline to a Ray cluster
    core/         errors, params schema, atomic IO, storage URIs, Ray start-up, DDP collectives
    params/       params.yaml as one typed tree; cli.py, the stage scripts' plumbing
"""
