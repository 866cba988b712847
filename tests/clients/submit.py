#!/usr/bin/env python3
"""A Cube client in Python, written from the contract alone (docs/schema, docs/asyncapi.yaml).

    submit.py URL submit TASK_ID IMAGE [CMD ...]   publish a submit TaskEvent to tasks.events
    submit.py URL stop TASK_ID                     publish a stop TaskEvent
    submit.py URL get TASK_ID                      print the task (cube.api.tasks.get) as JSON

Events go through JetStream (stream CUBE_EVENTS), with the event id as Nats-Msg-Id so a
repeated publish is recognised as a duplicate. Credentials, if the server wants them, come
from CUBE_NATS_USER and CUBE_NATS_PASSWORD. Needs nats-py (pip install nats-py).
"""

import asyncio
import json
import os
import sys
import uuid
from datetime import datetime, timezone

try:
    import nats
except ImportError:
    sys.exit("this client needs nats-py: pip install nats-py")


def check(ev):
    """Validates an event against the shipped JSON Schema, if asked to."""
    directory = os.environ.get("CUBE_SCHEMA_DIR")
    if not directory:
        return
    import jsonschema

    with open(os.path.join(directory, "task-event.json")) as f:
        schema = json.load(f)
    validator = jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    validator.validate(ev)


def event(state, task):
    return {
        "id": str(uuid.uuid4()),
        "state": state,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "task": task,
    }


async def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    url, command, task_id = argv[0], argv[1], argv[2]
    options = {}
    if os.environ.get("CUBE_NATS_USER"):
        options["user"] = os.environ["CUBE_NATS_USER"]
        options["password"] = os.environ.get("CUBE_NATS_PASSWORD", "")
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0, **options)
    try:
        if command in ("submit", "stop"):
            if command == "submit":
                if len(argv) < 4:
                    sys.exit(__doc__)
                task = {"id": task_id, "name": "from-python", "image": argv[3],
                        "cmd": argv[4:], "cpu": 0.1, "memory": 64 * 1024 * 1024}
                ev = event("running", task)
            else:
                ev = event("completed", {"id": task_id})
            check(ev)
            js = nc.jetstream()
            ack = await js.publish("tasks.events", json.dumps(ev).encode(),
                                   headers={"Nats-Msg-Id": ev["id"]})
            print(json.dumps({"event": ev["id"], "stream": ack.stream, "seq": ack.seq}))
        elif command == "get":
            reply = await nc.request("cube.api.tasks.get",
                                     json.dumps({"id": task_id}).encode(), timeout=10)
            answer = json.loads(reply.data)
            if "error" in answer:
                sys.exit(f"cube.api.tasks.get: {answer['error']}")
            print(json.dumps(answer["ok"]))
        else:
            sys.exit(__doc__)
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
