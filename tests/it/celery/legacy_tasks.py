"""Tasks that still run on Celery workers during a migration; tests/it/celery.rs starts a real
Celery worker over this module and calls them from Rust."""

import os

from celery import Celery

app = Celery("legacy", broker=os.environ["LEGACY_BROKER"], backend=os.environ["LEGACY_BROKER"])
app.conf.broker_connection_retry_on_startup = True


@app.task(name="legacy.multiply")
def multiply(a, b, scale=1):
    return a * b * scale


@app.task(name="legacy.refuse")
def refuse(why):
    raise ValueError(why)
