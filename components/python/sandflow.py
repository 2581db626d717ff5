"""sandflow's guest library for Python steps (componentize-py).

A step is a function from one JSON input to one JSON output. Write it as a
class named ``WitWorld`` (the name componentize-py looks for) that extends
``sandflow.Step``, sets its metadata, and implements ``handle``::

    import sandflow
    from sandflow import StepError, log

    class WitWorld(sandflow.Step):
        name = "shout"
        version = "0.1.0"
        description = "Shouts."
        input_schema = {"type": "object", "required": ["text"]}

        def handle(self, input):
            if not input["text"]:
                raise StepError.permanent("`text` is empty")
            log.info(f"shouting {len(input['text'])} characters")
            return {"text": input["text"].upper() + "!"}

What the host gives a step, and nothing more: ``log`` lines, run-scoped
``state``, content-addressed ``blobs``, its static ``config()``, clocks,
random, and ``print`` (captured into the step's log).
"""

import json
from typing import Any, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import blobs as _blobs
from wit_world.imports import config as _config
from wit_world.imports import log as _log
from wit_world.imports import state as _state
from wit_world.imports.types import Metadata, StepError as _WitStepError


class StepError(Exception):
    """A step failure: a message for a person and whether a retry may help.

    ``StepError(message)`` may be fixed by a retry (a busy or flaky
    resource); ``StepError.permanent(message)`` cannot, so the host does not
    retry it.
    """

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.retryable = retryable

    @classmethod
    def permanent(cls, message: str) -> "StepError":
        return cls(message, retryable=False)


class log:
    """Lines in the step's log."""

    @staticmethod
    def trace(message: str) -> None:
        _log.log(_log.Level.TRACE, str(message))

    @staticmethod
    def debug(message: str) -> None:
        _log.log(_log.Level.DEBUG, str(message))

    @staticmethod
    def info(message: str) -> None:
        _log.log(_log.Level.INFO, str(message))

    @staticmethod
    def warn(message: str) -> None:
        _log.log(_log.Level.WARN, str(message))

    @staticmethod
    def error(message: str) -> None:
        _log.log(_log.Level.ERROR, str(message))


class state:
    """JSON values shared by the steps of one run."""

    @staticmethod
    def get(key: str) -> Any:
        """The value stored under ``key``, or ``None``."""
        text = _state.get(key)
        return None if text is None else json.loads(text)

    @staticmethod
    def set(key: str, value: Any) -> None:
        """Stores ``value`` (anything ``json.dumps`` accepts) under ``key``."""
        try:
            _state.set(key, json.dumps(value))
        except Err as e:
            raise StepError.permanent(f"state.set({key!r}): {e.value}")


class blobs:
    """Content-addressed bytes, passed between steps by id."""

    @staticmethod
    def put(data) -> str:
        """Stores bytes (``bytes``, or ``str`` as UTF-8); returns the id."""
        if isinstance(data, str):
            data = data.encode()
        try:
            return _blobs.put(bytes(data))
        except Err as e:
            raise StepError.permanent(f"blobs.put: {e.value}")

    @staticmethod
    def get(id: str) -> Optional[bytes]:
        """The bytes stored under ``id``, or ``None``."""
        return _blobs.get(id)


def config() -> Any:
    """The component's static ``config`` from the workflow (or ``call
    --config``); ``None`` when none was given."""
    return json.loads(_config.get())


class Step(wit_world.WitWorld):
    """Base class of a Python step: set the metadata, implement ``handle``.

    ``handle(input)`` gets the parsed input and returns the output (any
    value ``json.dumps`` accepts). Raise ``StepError`` to fail the step; any
    other exception fails it too, not retryable, with its message.
    """

    name: str = "step"
    version: str = "0.1.0"
    description: str = ""
    input_schema: Optional[dict] = None
    output_schema: Optional[dict] = None

    def handle(self, input: Any) -> Any:
        raise NotImplementedError("implement handle(self, input) in your WitWorld class")

    def run(self, input: str) -> str:
        try:
            output = self.handle(json.loads(input))
            return json.dumps(output)
        except StepError as e:
            raise Err(_WitStepError(message=e.message, retryable=e.retryable))
        except Exception as e:
            message = f"{type(e).__name__}: {e}"
            raise Err(_WitStepError(message=message, retryable=False))

    def describe(self) -> Metadata:
        dump = lambda s: None if s is None else json.dumps(s)
        return Metadata(
            name=self.name,
            version=self.version,
            description=self.description,
            input_schema=dump(self.input_schema),
            output_schema=dump(self.output_schema),
        )
