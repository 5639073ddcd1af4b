"""A PSW5-style Python caller: real Celery 5 and redis-py, sending to the Rust workers.

Run by tests/it/celery.rs as `python caller.py <redis url> <celery queue>`; prints one JSON
object with what each call saw, exactly as a Python service would see it.
"""

import datetime
import json
import sys
import time

import redis
from celery import Celery, chain, group
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

# track_started: the worker records STARTED while the task runs.
slow = send("it.celery_slow", args=["tracked"])
states = set()
deadline = time.time() + 10
while not slow.ready() and time.time() < deadline:
    states.add(slow.state)
    time.sleep(0.05)
seen["started"] = {"states": sorted(states), "result": slow.get(timeout=10)}

# A time limit of the message's own, under the task's.
seen["time_limit"] = failure(send("it.celery_slow", args=["cut short"], time_limit=0.3))

# A chain of two Rust tasks: the second takes the first's result.
steps = chain(
    app.signature("it.celery_quote", args=["AAPL.US"], kwargs={"force": True}, queue=queue),
    app.signature("it.celery_shout", queue=queue),
).apply_async()
seen["chain"] = {"result": steps.get(timeout=15), "first": steps.parent.get(timeout=5)}

# A callback (link) and an errback (link_error), each with its id set beforehand.
callback = app.signature("it.celery_shout", queue=queue)
called = callback.freeze()
linked = send("psw_cron.ping", args=["linked"], link=callback)
seen["link"] = {"result": called.get(timeout=15), "parent": linked.get(timeout=5)}
errback = app.signature("it.celery_on_error", queue=queue)
noted = errback.freeze()
failing = send("it.celery_fails", args=["errback me"], link_error=errback)
seen["link_error"] = {"result": noted.get(timeout=15), "failed": failing.id}

# A group is not run yet: its members fail with the reason, as a Celery FAILURE.
members = group(
    app.signature("psw_cron.ping", args=["g1"], queue=queue),
    app.signature("psw_cron.ping", args=["g2"], queue=queue),
).apply_async()
seen["group"] = failure(members.results[0])

foreign = send("legacy.only_in_python", args=[1])
time.sleep(2)
waiting = redis.Redis.from_url(broker).lrange(queue, 0, -1)
seen["foreign_left"] = any(json.loads(m)["headers"]["id"] == foreign.id for m in waiting)
seen["foreign_state"] = foreign.state

print(json.dumps(seen))
