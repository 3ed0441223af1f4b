"""Errors a user can act on. Each message names the problem (file, line, field, allowed values)."""


class FastifError(Exception):
    """Base class: an error with a message meant for the user (the CLI prints it as one line)."""


class DataFormatError(FastifError):
    """An input data file is malformed: the message names the file, line and problem."""


class ConfigError(FastifError):
    """A setting is out of range or inconsistent: the message names the field and allowed values."""


class SolverError(FastifError):
    """An s_test solver could not return a trustworthy answer: the message says what to change."""


class LissaDivergenceError(SolverError):
    """The LiSSA recursion produced non-finite values or an exploding norm (scale too small)."""


class CurvatureBreakdownError(SolverError):
    """Conjugate gradient met non-positive curvature pᵀ(C + μI)p <= 0: the damped matrix is indefinite."""


class WorkspaceError(FastifError):
    """A workspace is missing, not prepared, or does not contain the requested item."""


class JobError(FastifError):
    """A job could not be enqueued or run (bad parameters, cancelled, ...)."""


class LeaseLostError(JobError):
    """A worker tried to heartbeat or finish a job it no longer owns (its lease expired and was taken)."""


class QueryCancelled(JobError):
    """An influence query was cancelled between steps; nothing was returned (raised on rank 0)."""


def describe_error(error: BaseException | None) -> tuple[str, str] | None:
    """``(class name, message)`` of an error, picklable, for sending it to another rank (None: no error)."""
    return None if error is None else (type(error).__name__, str(error))


def rebuild_error(rank: int, described: tuple[str, str]) -> FastifError:
    """An error :func:`describe_error` described on ``rank``, as the same FastifError class (others as JobError)."""
    name, message = described
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, FastifError):
        return cls(message)
    return JobError(f"rank {rank} failed: {name}: {message}")
