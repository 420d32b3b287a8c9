"""``Tasks``: a registry of named jobs, and ``Task``, the typed handle of one of them.

A task is a function whose keyword arguments travel as the job's payload (a dict), under the
job's ``name``. The worker that serves a registry runs, for each job, the task of its queue that
has the job's name; producers add a task's jobs with ``task.add(client, ...)``, checked by mypy
against the function's signature.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, Unpack, overload

from conveyor.client import Client, JobOptions, SyncClient
from conveyor.protocol import MAX_JOB_NAME, check_queue_name

from .errors import InvalidArguments

__all__ = ["Task", "Tasks"]

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """One registered function: call it to run it here, ``add`` it to queue it as a job.

    ``queue`` and ``name`` say where its jobs go and what they are called; ``options`` are the job
    options ``add`` sends (see ``using``).
    """

    def __init__(self, func: Callable[P, R], *, queue: str, name: str,
                 options: JobOptions | None = None) -> None:
        self.func = func
        self.queue = queue
        self.name = name
        self.options: JobOptions = {**options} if options is not None else {}
        self.signature = inspect.signature(func)
        self.is_async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)  # __doc__, __module__, __wrapped__...
        self.__name__: str = getattr(func, "__name__", name)

    def __repr__(self) -> str:
        return f"<Task {self.name!r} on queue {self.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now (an async one returns its coroutine), as in tests."""
        return self.func(*args, **kwargs)

    @overload
    def add(self, client: SyncClient, /, *args: P.args, **kwargs: P.kwargs) -> int: ...

    @overload
    def add(self, client: Client, /, *args: P.args,
            **kwargs: P.kwargs) -> Coroutine[Any, Any, int]: ...

    def add(self, client: Client | SyncClient, /, *args: Any,
            **kwargs: Any) -> Coroutine[Any, Any, int] | int:
        """Add a job that runs this task with these arguments; its id.

        With a ``Client``, await the call; a ``SyncClient`` returns the id directly. Positional
        arguments are bound to their parameter names: the payload is the dict of arguments.

        Raises:
            TypeError: the arguments do not fit the function's signature, or a value cannot
                be serialized (before anything is sent).
            ValueError: a job option is out of range.
            ConveyorError: as ``Client.add`` does.
        """
        options: JobOptions = {**self.options, "name": self.name}
        return client.add(self.queue, self.payload(*args, **kwargs), **options)

    def using(self, **options: Unpack[JobOptions]) -> Task[P, R]:
        """This task with job options (``delay``, ``priority``, ``attempts``...) for ``add``:
        ``await send_email.using(delay=60).add(client, to=...)``. Options given here replace
        the ones it had; the job's ``name`` is always the task's.

        Raises:
            ValueError: ``name`` was given.
        """
        if "name" in options:
            raise ValueError(f"the jobs of task {self.name!r} are named {self.name!r}: "
                             f"register another task to use another name")
        return Task(self.func, queue=self.queue, name=self.name,
                    options={**self.options, **options})

    def payload(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The job payload for a call with these arguments: each bound to its parameter's name
        (defaults are left to the worker).

        Raises:
            TypeError: the arguments do not fit the function's signature.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{_plain(self.signature)}: {exc}") from None
        payload: dict[str, Any] = {}
        for key, value in bound.arguments.items():
            if self.signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                payload.update(value)
            else:
                payload[key] = value
        return payload

    def arguments(self, job_id: int, data: Any) -> dict[str, Any]:
        """The keyword arguments of a delivered job's payload, checked against the signature.

        Raises:
            InvalidArguments: the payload is not a dict of keyword arguments that fit.
        """
        if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
            raise InvalidArguments(
                f"job {job_id} of task {self.name!r} has a payload of type "
                f"{type(data).__name__}; a task's payload is a dict of its keyword arguments")
        try:
            self.signature.bind(**data)
        except TypeError as exc:
            raise InvalidArguments(f"the arguments of job {job_id} do not fit task "
                                   f"{self.name}{_plain(self.signature)}: {exc}") from None
        return data


def _plain(signature: inspect.Signature) -> inspect.Signature:
    """``signature`` without annotations: ``(path, width=100)``, short enough for a message."""
    empty = inspect.Parameter.empty
    return signature.replace(
        parameters=[parameter.replace(annotation=empty)
                    for parameter in signature.parameters.values()],
        return_annotation=inspect.Signature.empty)


class Tasks:
    """A registry of tasks: named functions, each on a queue.

    ``@tasks.job(queue="emails")`` registers a function; ``tasks.queue("images", concurrency=4)``
    sets how many jobs of a queue a worker runs at once. ``Worker(tasks)`` (or the CLI given
    ``MODULE:TASKS``) serves every queue of the registry.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._concurrency: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<Tasks {sorted(self._tasks)} on queues {self.queues}>"

    def job(self, *, queue: str,
            name: str | None = None) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Register the decorated function as the task ``name`` (default: the function's
        ``__name__``) on ``queue``; the decorator returns its ``Task``.

        The function's parameters travel by name: positional-only and ``*args`` parameters
        cannot. A plain function runs in a thread of the worker, an async one on its loop.

        Raises:
            ValueError: a bad queue or task name, a name registered already, or parameters
                that cannot travel by name.
        """
        problem = check_queue_name(queue)
        if problem is not None:
            raise ValueError(problem)

        def register(func: Callable[P, R]) -> Task[P, R]:
            task_name = name if name is not None else getattr(func, "__name__", "")
            if not (isinstance(task_name, str) and 0 < len(task_name) <= MAX_JOB_NAME):
                raise ValueError(f"a task name is a string of 1 to {MAX_JOB_NAME} characters, "
                                 f"got {task_name!r}")
            if task_name in self._tasks:
                raise ValueError(f"task {task_name!r} is registered already (on queue "
                                 f"{self._tasks[task_name].queue!r})")
            for parameter in inspect.signature(func).parameters.values():
                if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                      inspect.Parameter.VAR_POSITIONAL):
                    raise ValueError(
                        f"task {task_name!r}: parameter {parameter.name!r} is "
                        f"{parameter.kind.description}; a task's arguments travel by name")
            task = Task(func, queue=queue, name=task_name)
            self._tasks[task_name] = task
            return task

        return register

    def queue(self, name: str, *, concurrency: int | None = None) -> None:
        """Set how many jobs of queue ``name`` one worker runs at once (its credit window);
        None: the worker's default ``concurrency``.

        Raises:
            ValueError: a bad queue name, or ``concurrency`` below 1.
        """
        problem = check_queue_name(name)
        if problem is not None:
            raise ValueError(problem)
        if concurrency is None:
            self._concurrency.pop(name, None)
            return
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer of at least 1, got {concurrency!r}")
        self._concurrency[name] = concurrency

    @property
    def queues(self) -> list[str]:
        """The queues that have tasks, in order of registration."""
        return list(dict.fromkeys(task.queue for task in self._tasks.values()))

    def concurrency(self, queue: str) -> int | None:
        """The concurrency set for ``queue`` with ``queue()``, or None."""
        return self._concurrency.get(queue)

    def on(self, queue: str) -> Mapping[str, Task[Any, Any]]:
        """The tasks of ``queue``, by name."""
        return {name: task for name, task in self._tasks.items() if task.queue == queue}

    def get(self, name: str) -> Task[Any, Any] | None:
        """The task called ``name``, or None."""
        return self._tasks.get(name)

    def __getitem__(self, name: str) -> Task[Any, Any]:
        return self._tasks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task[Any, Any]]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)
