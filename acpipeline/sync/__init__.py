"""The sync domain: MongoDB -> items -> blobs -> records -> PDS -> MongoDB link fields."""
