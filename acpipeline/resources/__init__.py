"""The edges of the pipeline: MongoDB, the PDS, and media storage, each a Dagster resource."""
