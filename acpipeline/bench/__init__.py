"""`acpipeline bench`: the sync against the PDS's own ceiling and the platform's strategy, in one run."""
