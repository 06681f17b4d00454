"""The job the sensor and the schedule launch: one sync partition (handle|media) through the three stages."""

from dagster import AssetSelection, define_asset_job

from acpipeline.sync.assets import atproto_records, media_blobs, source_items

SYNC_JOB_NAME = "sync_partition"

sync_job = define_asset_job(
    SYNC_JOB_NAME,
    # The assets and their check: a run reads the source, derives blobs and converges the records.
    selection=AssetSelection.assets(source_items, media_blobs, atproto_records),
    description="Sync one partition (handle|media): MongoDB items -> blobs -> ATProto records. Launched by "
    "the new-content sensor and the nightly schedule; partitions with nothing to do write nothing.",
)
