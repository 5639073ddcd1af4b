"""A PSW5-style Python caller: real Celery 5 and redis-py, sending to the Rust workers.

Run by tests/it/celery.rs as `python caller.py <redis url> <celery queue>`; prints one JSON
object with what each call saw, exactly as a Python service would see it.
"""

import datetime
import json
import sys
import time

import redis
from celery import Celery
from celery.exceptions import TaskRevokedError

broker, queue = sys.argv[1], sys.argv[2]
app = Celery("psw5", broker=broker, backend=broker)
app.conf.broker_connection_retry_on_startup = True
seen = {}


def send(name, **options):
    return app.send_task(name, queue=queue, **options)


def failure(result):
    try:
        result.get(timeout=10)
    except TaskRevokedError as err:
        return {"type": "TaskRevokedError", "message": str(err), "state": result.state}
    except Exception as err:  # noqa: BLE001 - the point is which exception Python raises
        return {"type": type(err).__name__, "message": str(err), "state": result.state}
    return {"type": None, "state": result.state}


ping = send("psw_cron.ping", args=["hi"])
seen["ping"] = {"result": ping.get(timeout=10), "state": ping.state, "ready": ping.ready()}

quote = send("it.celery_quote", args=["AAPL.US"], kwargs={"force": True})
seen["kwargs"] = quote.get(timeout=10)

started = time.time()
later = send("psw_cron.ping", args=["later"], countdown=2)
seen["countdown"] = {"result": later.get(timeout=15), "after": time.time() - started}

started = time.time()
eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
at_eta = send("psw_cron.ping", args=["at eta"], eta=eta)
seen["eta"] = {"result": at_eta.get(timeout=15), "after": time.time() - started}

past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
seen["expired"] = failure(send("psw_cron.ping", args=["too late"], expires=past))

seen["failure"] = failure(send("it.celery_fails", args=["no quote for XYZ.US"]))

seen["bad_args"] = failure(send("it.celery_quote", args=["AAPL.US"], kwargs={"forse": True}))

flaky = send("it.celery_flaky")
seen["retry"] = {"result": flaky.get(timeout=10), "state": flaky.state}

foreign = send("legacy.only_in_python", args=[1])
time.sleep(2)
waiting = redis.Redis.from_url(broker).lrange(queue, 0, -1)
seen["foreign_left"] = any(json.loads(m)["headers"]["id"] == foreign.id for m in waiting)
seen["foreign_state"] = foreign.state

print(json.dumps(seen))
