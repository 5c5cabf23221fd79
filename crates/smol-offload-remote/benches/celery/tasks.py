"""The trivial task of the remote benchmark, for Celery: returns its argument."""
import os

from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.worker_prefetch_multiplier = 4
app.conf.task_acks_late = False


@app.task
def echo(n):
    return n
