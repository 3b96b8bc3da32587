"""Subprocess for the store's kill test: open the store, post feedback from several threads, print each feedback id
to stdout (flushed) only after its write call returned, so a printed id is an acknowledged one. Prints "ready" once
the store is open; runs until killed.

    python store_writer.py URL RESPONSE_ID PREFIX [THREADS]

    python store_writer.py --zygote
        imports once, then forks writers on request (a writer then starts in milliseconds, not the ~0.5 s of
        importing SQLAlchemy). Each stdin line is a JSON list:
        [URL, RESPONSE_ID, PREFIX, THREADS, OUTFILE]: fork a writer whose stdout is OUTFILE; prints its pid.
        ["wait", PID]: reap it; prints its exit status (-N: killed by signal N).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback

from alignkit.serve.store import Store


def write_until_killed(url: str, response_id: str, prefix: str, threads: int = 4) -> None:
    store = Store(url)
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:  # whole lines only
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def post(t: int) -> None:
        for i in range(10**9):
            fid = f"{prefix}-{t}-{i}"
            store.add_feedback(response_id, "up" if i % 2 else "down", feedback_id=fid)
            say(fid)

    say("ready")
    workers = [threading.Thread(target=post, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def zygote() -> None:
    try:  # what a PostgreSQL writer would import, so a fork starts with it
        import psycopg  # noqa: F401
        import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
    except ImportError:
        pass
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd[0] == "wait":
            _, status = os.waitpid(int(cmd[1]), 0)
            print(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
            continue
        url, response_id, prefix, threads, out = cmd
        pid = os.fork()  # this process runs no threads, so forking it is safe
        if pid == 0:
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.close(fd)
                write_until_killed(url, response_id, prefix, int(threads))
            except BaseException:  # noqa: BLE001 - reported to the test through the output file
                sys.stdout.write("error: " + traceback.format_exc().replace("\n", " | ") + "\n")
                sys.stdout.flush()
            finally:
                os._exit(1)
        print(pid, flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        zygote()
    else:
        url, response_id, prefix = sys.argv[1:4]
        write_until_killed(url, response_id, prefix, int(sys.argv[4]) if len(sys.argv) > 4 else 4)
