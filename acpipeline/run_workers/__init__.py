"""The Celery layout (deploy/celery/): runs launched as Celery tasks into long-lived, warm worker processes
on any number of machines, instead of a new process per run on the code server's machine."""
