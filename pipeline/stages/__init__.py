"""One module per dvc.yaml stage; each exposes a Prefect flow and `flow_entry`."""
