"""One exception hierarchy for lorawf, and the single table that maps it to process exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Exit codes (also documented in docs/reference/exit-codes.md; tests pin them).
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_REJECTED = 4
EXIT_SERVER = 5
EXIT_CANCELLED = 130


class LorawfError(Exception):
    """Base of every error lorawf raises on purpose. ``str(err)`` is one line fit for a user."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


# --- the job itself failed (exit 1) ---
class JobFailed(LorawfError):
    """The requested job ran but its outcome is a failure."""


class RunFailed(JobFailed):
    """The ComfyUI run ended with an execution error or was interrupted by someone else."""


class DriftFound(JobFailed):
    """``regen --check`` found committed files that are out of date."""


class ValidationFailed(JobFailed):
    """A workflow has problems that the server would reject or silently ignore."""


class SecretInRecord(JobFailed):
    """A run record about to be written contains a secret; nothing was written."""


# --- usage (exit 2) ---
class UsageError(LorawfError):
    """The command line itself is wrong (conflicting or missing options)."""


# --- bad input (exit 3) ---
class InputError(LorawfError):
    """A file, dataset, template, token or override given by the user is not acceptable."""


class DatasetError(InputError):
    """The dataset folder is missing, unreadable or empty."""


class TemplateError(InputError):
    """The workflow template is malformed or lacks a node role the patcher needs."""


class TokenError(InputError):
    """The trigger token cannot be substituted safely."""


class OverrideError(InputError):
    """A planning override or ``--set`` value is outside what the nodes accept."""


class RecordError(InputError):
    """A run record cannot be read: missing, not JSON, or not the ``lorawf.run/1`` schema."""


class WorkflowFormatError(InputError):
    """A workflow file is not valid JSON or not in the expected format."""


# --- the server rejected the workflow (exit 4) ---
class ServerRejected(LorawfError):
    """The server answered ``POST /prompt`` with 400 (or refused an upload)."""


class PromptRejected(ServerRejected):
    """``POST /prompt`` answered 400: nothing was queued.

    ``str()`` is the summary line, then the indented node errors and hints (built by
    ``lorawf.comfy.node_errors.rejection``); ``node_errors`` keeps every parsed entry for ``--json``.
    """

    def __init__(self, summary: str, detail_lines: tuple[str, ...] = (), *, status: int = 400,
                 error: Any = None, error_type: str = "", error_message: str = "", error_details: str = "",
                 node_errors: tuple[Any, ...] = ()) -> None:
        super().__init__(summary)
        self.summary = summary
        self.detail_lines = detail_lines
        self.status = status
        self.error = error
        self.error_type = error_type
        self.error_message = error_message
        self.error_details = error_details
        self.node_errors = node_errors

    def lines(self) -> list[str]:
        """Summary line then indented node errors and hints."""
        return [self.summary, *self.detail_lines]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class PreflightRejected(ServerRejected):
    """Preflight found problems the server would reject the workflow for; nothing was queued."""


# --- server unreachable or protocol failure (exit 5) ---
class ServerError(LorawfError):
    """The server could not be reached or answered in a way that breaks the protocol."""


class ServerUnreachable(ServerError):
    """Connection refused, DNS failure, TLS failure or timeout."""


class ProtocolError(ServerError):
    """The server sent something the protocol does not allow (malformed JSON, 500, 413...)."""


class WaitTimeout(ServerError):
    """The overall ``--timeout`` passed; the prompt keeps going on the server."""


class PromptLost(ServerError):
    """The prompt is neither queued, running nor in history (server restarted or entry evicted).

    ``run_dir`` names the run folder when the prompt was a ``lorawf run``'s (for ``--auto-continue``).
    """

    run_dir: Path | None = None


# --- cancelled by the user (exit 130) ---
class Cancelled(LorawfError):
    """The user pressed Ctrl-C or ran ``lorawf cancel``."""


_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (Cancelled, EXIT_CANCELLED),
    (ServerError, EXIT_SERVER),
    (ServerRejected, EXIT_REJECTED),
    (InputError, EXIT_BAD_INPUT),
    (UsageError, EXIT_USAGE),
    (JobFailed, EXIT_JOB_FAILED),
    (KeyboardInterrupt, EXIT_CANCELLED),
    (OSError, EXIT_BAD_INPUT),  # a file lorawf was told to read or write is not accessible
)


#: What the final ``done`` event says for an error: the most specific class first.
_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (Cancelled, "cancelled"),
    (KeyboardInterrupt, "cancelled"),
    (ServerRejected, "rejected"),
    (PromptLost, "lost"),
    (WaitTimeout, "timeout"),
    (ServerUnreachable, "unreachable"),
    (ServerError, "protocol_error"),
)


def outcome_for(error: BaseException) -> str:
    """The ``done`` event's outcome for ``error`` (``failed`` for everything not listed)."""
    for cls, outcome in _OUTCOMES:
        if isinstance(error, cls):
            return outcome
    return "failed"


def exit_code_for(error: BaseException) -> int:
    """Return the process exit code for ``error``: the one place where errors become exit codes."""
    for cls, code in _EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_JOB_FAILED
