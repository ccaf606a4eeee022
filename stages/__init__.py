"""The stage scripts dvc.yaml calls, each a thin main() over the library in pipeline/.

Run them as modules from the project root (`python -m stages.train ...`): Python then
imports the pipeline/ beside them, also in the copy of the project that a
`dvc exp run --queue` run executes in, whose code is what DVC hashed for it.
"""
