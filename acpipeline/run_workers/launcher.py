"""dagster-celery's run launcher, and a run whose worker is gone fails.

Celery reports a task whose pool process died (`WorkerLostError`) as failed, and Dagster's run monitoring
then fails the run and retries it. A worker that died whole (its machine, or SIGKILL to its main process)
reports nothing: its task stays STARTED in the result backend, and the run would stay STARTED, holding its
`pds_writes` slot, forever. Here run monitoring also asks the worker that started the task whether it still
runs it, and fails the run when it does not answer or does not have it.

Such a run has usually finished its first steps, whose outputs lived in the dead process's memory
(`mem_io_manager`): Dagster's default retry, from the failed step, cannot load them. Each run launched here
is tagged to be retried whole, as deploy/dagster.yaml's `run_retries` means it.
"""

from __future__ import annotations

from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import RETRY_STRATEGY_TAG
from dagster_celery.launcher import CeleryRunLauncher as DagsterCeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

# How long a worker has to answer; asked twice before its run is called lost (a busy broker, not a dead
# worker, should not fail a run: a run failed wrongly is retried beside the one still running).
ANSWER_TIMEOUT_S = 5.0
ASKS = 2


class CeleryRunLauncher(DagsterCeleryRunLauncher):
    """dagster-celery's launcher, with every run tagged to retry whole and a run whose worker lost its task
    failed."""

    def launch_run(self, context: LaunchRunContext) -> None:
        if RETRY_STRATEGY_TAG not in context.dagster_run.tags:
            self._instance.add_run_tags(context.dagster_run.run_id, {RETRY_STRATEGY_TAG: "ALL_STEPS"})
        super().launch_run(context)

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        health = super().check_run_worker_health(run)
        if health.status != WorkerStatus.RUNNING:
            return health
        task_id = run.tags[DAGSTER_CELERY_TASK_ID_TAG]
        started = self.celery.AsyncResult(task_id).info  # Celery's STARTED meta: the worker's name and pid
        worker = started.get("hostname") if isinstance(started, dict) else None
        if not worker:
            return health
        for _ in range(ASKS):
            answers = self.celery.control.inspect([worker], timeout=ANSWER_TIMEOUT_S).query_task(task_id)
            if answers:
                known = (answers.get(worker) or {}).get(task_id)
                if known and known[0] in ("active", "reserved"):
                    return health
                break  # the worker answered, without the task
        finished = super().check_run_worker_health(run)
        if finished.status != WorkerStatus.RUNNING:
            return finished  # it finished meanwhile
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"Celery worker {worker} no longer runs task {task_id} (the worker died?)"
        )
