"""The ``sitecustomize`` ``memspan run`` gives its child, and what it reports back.

The child runs with the same auto-instrumentation as ``opentelemetry-instrument``: a
``sitecustomize`` first on ``PYTHONPATH`` that calls OpenTelemetry's ``initialize()``. The
launcher writes its own small one into a private directory of the run
(:func:`prepare_child_site`) instead of pointing at OpenTelemetry's, because every Python
of the job imports it, including one that lacks memspan: ``memspan run -- /usr/bin/python3
train.py``, a virtual environment without memspan, a helper the job starts with another
interpreter. OpenTelemetry's then fails in that Python with Python's own "Error in
sitecustomize" and the job runs uninstrumented without anyone saying so.

Invariants:

- The child's program always runs: the file catches every exception (it never prevents
  the interpreter from starting), and it is plain Python that every Python 3 (and 2.7)
  can compile.
- A Python that cannot find memspan does not start OpenTelemetry (whose configurator
  would fail on the ``memspan_file`` exporter with a traceback of its own); it prints one
  line on stderr saying which interpreter ran uninstrumented and why, and leaves a note in
  the run's directory, once per interpreter (``O_EXCL``): :meth:`ChildSite.uninstrumented`
  reads them back for the summary. A Python where memspan is found but does not load
  (not disabled with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``) leaves a note too.
- As OpenTelemetry's ``initialize()`` does, the directory is off ``PYTHONPATH`` while
  OpenTelemetry starts (a subprocess started then does not initialise again) and back on
  afterwards, so the job's own subprocesses are instrumented as well.
- Notes are bounded: at most :data:`MAX_NOTES` files of at most :data:`MAX_NOTE_BYTES`, read
  as regular files only; the directory is private (``0700``) and removed with
  :meth:`ChildSite.remove` after the post-mortem.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from memspan.safe_files import read_regular_file

#: the notes read back (one per interpreter that ran uninstrumented)
MAX_NOTES = 16
MAX_NOTE_BYTES = 2048
_NOTES = "notes"

#: The generated ``sitecustomize.py``. ``%(notes)r`` is the notes directory and
#: ``%(check)r`` whether memspan must load (False when the user disabled it). Plain enough
#: for any Python: no f-strings, no annotations, ``%`` formatting.
_TEMPLATE = """\
# Written by memspan run for this run only (memspan/launcher/child_site.py): starts the
# OpenTelemetry auto-instrumentation, or says why this Python runs without memspan.
import os
import sys


def _memspan_run_note(notes, problem):
    executable = sys.executable or "python"
    handle = None
    try:
        import errno
        import hashlib
        key = hashlib.sha1(executable.encode("utf-8", "replace")).hexdigest()[:20]
        handle = os.open(os.path.join(notes, key + ".txt"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 384)
    except OSError as error:
        if error.errno == errno.EEXIST:
            return  # another process of this interpreter said it already
    except Exception:
        pass  # no note (the run's directory is gone): still say it
    if handle is not None:
        try:
            text = "%%s\\n%%s\\n" %% (executable, problem)
            os.write(handle, text.encode("utf-8", "replace")[:%(limit)d])
        finally:
            os.close(handle)
    try:
        sys.stderr.write("memspan run: %%s runs this process without memspan (%%s). Install "
                         "memspan into that environment, or run the job with a python that "
                         "has it.\\n" %% (executable, problem))
        sys.stderr.flush()
    except Exception:
        pass


def _memspan_run_start(notes, check):
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        import importlib.util
        found = importlib.util.find_spec("memspan") is not None
    except Exception:
        found = False
    if not found:
        _memspan_run_note(notes, "No module named 'memspan'")
        return
    path = os.environ.get("PYTHONPATH")
    if path is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [entry for entry in path.split(os.pathsep) if entry != here])
    try:
        try:
            from opentelemetry.instrumentation.auto_instrumentation import initialize
        except Exception as error:
            _memspan_run_note(notes, "%%s: %%s" %% (type(error).__name__, error))
            return
        initialize()
    finally:
        if path is not None:
            os.environ["PYTHONPATH"] = path
    if check and "memspan" not in sys.modules:
        _memspan_run_note(notes, "memspan is found but the auto-instrumentation did not load "
                                 "it (is it installed with pip, with its entry points?)")


try:
    _memspan_run_start(%(notes)r, %(check)r)
except Exception:
    pass
"""


@dataclass(frozen=True)
class UninstrumentedPython:
    """One interpreter of the job that ran without memspan, and why."""

    executable: str
    problem: str


@dataclass(frozen=True)
class ChildSite:
    """The run's private directory: ``sitecustomize.py`` and the children's notes."""

    directory: str

    @property
    def notes(self) -> str:
        return os.path.join(self.directory, _NOTES)

    def uninstrumented(self) -> list[UninstrumentedPython]:
        """The interpreters that noted they ran without memspan (at most :data:`MAX_NOTES`)."""
        try:
            names = sorted(os.listdir(self.notes))[:MAX_NOTES]
        except OSError:
            return []
        out = []
        for name in names:
            try:
                data = read_regular_file(os.path.join(self.notes, name), MAX_NOTE_BYTES).data
            except OSError:
                continue
            executable, _, problem = data.decode("utf-8", "replace").partition("\n")
            if executable:
                out.append(UninstrumentedPython(executable, problem.strip()))
        return out

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def prepare_child_site(check_memspan_loads: bool) -> ChildSite:
    """Write the run's ``sitecustomize.py`` into a new private directory (put it first on
    the child's ``PYTHONPATH``); ``check_memspan_loads``: a Python that finds memspan but
    did not load it is reported (False when the user disabled memspan)."""
    directory = tempfile.mkdtemp(prefix="memspan-run-")
    site = ChildSite(directory)
    os.mkdir(site.notes, 0o700)
    source = _TEMPLATE % {"notes": site.notes, "check": bool(check_memspan_loads), "limit": MAX_NOTE_BYTES}
    path = os.path.join(directory, "sitecustomize.py")
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(source)
    return site
