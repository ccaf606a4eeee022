"""Running the pipeline on a Ray cluster: submit.py sends the project as a Ray Job, runs
`dvc repro` there and brings the declared outputs back."""
