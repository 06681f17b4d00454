"""The real reference PDS, run locally: Node 22 and `@atproto/dev-env` installed from the pinned lockfiles."""
