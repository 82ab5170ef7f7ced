"""The grader's side inside the sandbox: ``python -m ldm_minimal.course.harness JOB_DIR`` (started by sandbox.py).

1. drop to the unprivileged user id it was given (when started as root inside bubblewrap);
2. run the notebook's imports, then the hidden grading specs (the grader's own code), then the answer cells of
   earlier exercises that passed (a failed one is replaced by its spec's fallback, as in the notebook);
3. print the READY line (the grader's clock for this exercise starts), run this exercise's answer cell, call the
   answer on every case through its spec's probe, and write the results as data (safetensors + JSON) to the file
   descriptor the grader opened. Whatever happens is recorded, never trusted: the grader compares the data with
   the reference it computes in its own process.

Job (``JOB_DIR/job.json``)::

    {"context": [import statements], "specs": {name: source}, "earlier": [{"answer", "source" | null}],
     "answer": name, "source": the answer cell, "banned": [symbols], "threads": int}
"""

from __future__ import annotations

import builtins
import gc
import json
import os
import sys

import torch

from ldm_minimal.course import exercise
from ldm_minimal.course.sandbox import READY


def _drop_privileges() -> None:
    uid = os.environ.pop("LDM_SANDBOX_UID", None)
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(int(uid))
        os.setuid(int(uid))
        if os.getuid() == 0 or os.geteuid() == 0:
            raise SystemExit("harness: could not drop root")


def main(job_dir: str) -> None:
    _drop_privileges()  # before any of the learner's code runs (imports above are the package's own)
    fd = int(os.environ.pop("LDM_RESULT_FD"))
    job = json.loads(open(os.path.join(job_dir, "job.json")).read())
    torch.set_num_threads(max(1, int(job.get("threads", 1))))
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    for statement in job["context"]:
        try:
            exec(compile(statement, "<notebook imports>", "exec"), ns)
        except Exception:  # an import the sandbox lacks: the answer that needs it fails visibly
            pass
    context = dict(ns)  # the imports alone, before anything else is defined
    specs = {}
    for name, source in job["specs"].items():
        spec_ns = dict(context)  # each spec in a namespace of its own: answers never see its names
        exercise.SPECS.clear()
        exec(compile(source, f"<grading spec {name}>", "exec"), spec_ns)
        specs[name] = exercise.SPECS.pop(name)
        if name == job["answer"]:  # this exercise's reference is the grader's business only: drop every handle on it
            for key, value in list(spec_ns.items()):
                if value is specs[name].reference or value is specs[name].fallback:
                    del spec_ns[key]
            specs[name].reference = specs[name].fallback = None
    exercise.SPECS.clear()
    gc.collect()
    for earlier in job["earlier"]:
        if earlier["source"] is None:
            ns[earlier["answer"]] = specs[earlier["answer"]].fallback_answer()
            continue
        try:
            exec(compile(earlier["source"], f"<answer {earlier['answer']}>", "exec"), ns)
        except BaseException:  # it passed when graded on its own; here it only has to define its names
            pass
    cases = exercise.load_data(os.path.join(job_dir, "cases.safetensors"))
    spec = specs[job["answer"]]
    result: dict = {"cell_error": None, "missing": False, "outputs": []}
    with exercise.banned_symbols(job["banned"]):  # on top of the stubbed files: names bound earlier raise too
        sys.stdout.buffer.write(READY)
        sys.stdout.flush()
        try:
            exec(compile(job["source"], f"<answer {job['answer']}>", "exec"), ns)
        except BaseException as err:  # SystemExit and KeyboardInterrupt included: the cell failed, we go on
            result["cell_error"] = exercise.Raised.of(err)
        answer = ns.get(job["answer"])
        if result["cell_error"] is None:
            if job["answer"] not in ns:
                result["missing"] = True
            else:
                result["outputs"] = [exercise.run_probe(spec.probe, answer, tuple(case)) for case in cases]
    blob = exercise.data_bytes(result)
    with os.fdopen(fd, "wb") as fh:
        fh.seek(0)
        fh.truncate()
        fh.write(blob)
    sys.stdout.flush()
    os._exit(0)  # threads, atexit hooks or finalizers the answer left behind do not get to run on


if __name__ == "__main__":
    main(sys.argv[1])
