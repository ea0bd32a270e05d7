"""A Python interpreter with the entry points' imports done once, that forks one child process per script run.

`python train.py ...` spends ~5-7 s importing torch, Lightning and Hydra before it reads its first override, and
the suite runs over a hundred of them: that import was most of the suite's time. conftest.run_script sends each run
here instead; this process (started once per test worker, its imports done) forks, and the child runs the script
exactly as `python <script> <args>` would from there: its own process id, working directory, environment,
stdout/stderr files, exit code, signal handlers and exit handlers. What differs is only what a fresh interpreter
would have re-done: the imports, and Python's start-up (sys.path is set as Python sets it: the script's directory,
then PYTHONPATH, then the rest).

No torch operation runs in this process before it forks (torch's thread pools start in each child, at its first
parallel operation), and it serves one request at a time. Protocol: one JSON request per line on stdin
({"argv", "cwd", "env", "stdout", "stderr", "timeout"}), one JSON reply per line on stdout ({"pid", "returncode"}
or {"pid", "timeout": true} after killing a child that overran). EOF on stdin ends it.
"""

import atexit
import json
import logging
import os
import random
import runpy
import signal
import sys
import time
import traceback

# The entry points import torch and Lightning after Hydra has set up logging, and Lightning adds a console handler
# of its own only where the root logger has none then: imported here with a root handler in place, as there.
_during_imports = logging.NullHandler()
logging.getLogger().addHandler(_during_imports)
import hydra  # noqa: E402, F401  - the imports every entry point makes, done once here
import pytorch_lightning  # noqa: E402, F401
import torch  # noqa: E402, F401

import makemore_lab.cli  # noqa: E402, F401
import makemore_lab.evaluate  # noqa: E402, F401
import makemore_lab.sample  # noqa: E402, F401
import makemore_lab.train  # noqa: E402, F401

logging.getLogger().removeHandler(_during_imports)

STARTUP_PATH = list(sys.path[1:])  # what Python put after the script's directory, with this process's PYTHONPATH
STARTUP_PYTHONPATH = os.environ.get("PYTHONPATH", "")


def python_path(env: dict) -> list[str]:
    """sys.path after the script's directory, as a fresh interpreter with `env` would have it."""
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    startup = [p for p in STARTUP_PYTHONPATH.split(os.pathsep) if p]
    return extra + [p for p in STARTUP_PATH if p not in startup]


def run_child(request: dict) -> None:
    """In the forked child: become `python <argv>` and exit with its exit code."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    atexit._clear()  # this server's exit handlers are not the script's
    random.seed()  # a fresh interpreter's random state, not this server's
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[:] = [os.path.dirname(os.path.abspath(script)), *python_path(request["env"])]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        if exit.code is None:
            code = 0
        elif isinstance(exit.code, int):
            code = exit.code
        else:
            print(exit.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve() -> None:
    replies = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        replies.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(request)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                reply = {"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                reply = {"pid": pid, "timeout": True}
                break
            time.sleep(0.01)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
