"""Exercises every part of the Python guest library (components/python/
sandflow.py) for tests/e2e/polyglot.rs: state, blobs, config, log, print,
and both kinds of StepError."""

import sandflow
from sandflow import StepError, blobs, config, log, state


class WitWorld(sandflow.Step):
    name = "libcheck-python"

    def handle(self, input):
        op = input["op"]
        if op == "put":
            state.set(input["key"], input["value"])
            id = blobs.put(input["text"])
            log.warn(f"stored {input['key']}")
            print("a print line")
            return {"id": id}
        if op == "get":
            data = blobs.get(input["id"])
            return {
                "value": state.get(input["key"]),
                "missing": "absent" if state.get("never-set") is None else "present",
                "text": None if data is None else data.decode(),
                "unknown_blob": "absent" if blobs.get("0" * 64) is None else "present",
                "config": config(),
            }
        if op == "retryable":
            raise StepError("busy, try again")
        if op == "permanent":
            raise StepError.permanent("this input can never work")
        if op == "crash":
            return input["no"]["such"]["field"]
        raise StepError.permanent(f"unknown op {op}")
