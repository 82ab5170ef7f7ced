"""Running a learner's code where it can neither reach the grader nor outlive its exercise.

One graded exercise = one fresh process, started by :func:`run_sandboxed`, in the strongest isolation this machine
allows (:func:`detect_isolation`):

``bubblewrap``  (Debian's ``bubblewrap`` package; the mode used on this project's machines and in CI)
    new PID, network, IPC and UTS namespaces; a file system of read-only binds: the system, the Python
    installation, ``data/`` (shipped checkpoints) and a copy of the package in which the exercise's banned symbols
    are stubbed, bound over the package itself. The repository, ``solutions/``, the submissions and ``--out`` are not
    in it at all. The working folder and ``/tmp`` are size-limited tmpfs mounts. When the grader runs as root, the
    code runs as a fresh unprivileged user id (a limit on its number of processes then applies to that id alone).
    When the exercise ends, its PID namespace ends with it: the kernel kills every process it started.
``user``  (root without bubblewrap)
    the same limits, a fresh unprivileged user id (so nothing of the course or the grader is writable) and, after
    the exercise, every process of that id is killed. The package copy with stubs comes first on the path, but the
    original package can still be read from disk.
``none``  (neither)
    a scratch folder, resource limits and a process-group kill only: code that detaches itself may survive, and
    the grade files are as writable as the grader's own. The grader says so in its output and in ``grades.json``.

Limits in every mode: CPU seconds, address space, file size, no core files; a wall-clock limit from the grader.
"""

from __future__ import annotations

import ast
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ldm_minimal
from ldm_minimal.utils import REPO_ROOT

PACKAGE_DIR = Path(ldm_minimal.__file__).resolve().parent
MODES = ("bubblewrap", "user", "none")
READY = b"\x00ldm-minimal-sandbox-ready\n"
HOME = "/home/student"


@dataclass(frozen=True)
class Isolation:
    mode: str  # one of MODES
    root: bool  # whether the grader runs as root (then the code runs as a fresh unprivileged uid)

    def describe(self) -> str:
        if self.mode == "bubblewrap":
            who = "a fresh unprivileged user id" if self.root else "your own user id in a user namespace"
            return (f"bubblewrap: own PID/network/IPC namespaces, read-only system and package, no repository or "
                    f"solutions, tmpfs working folder, as {who}")
        if self.mode == "user":
            return ("separate user: a fresh unprivileged user id and resource limits, its processes killed after each "
                    "exercise (no namespaces: install bubblewrap for more)")
        return ("none beyond a scratch folder and resource limits: the submission's code runs as you and could detach "
                "itself or read and write your files (run as root or install bubblewrap: apt-get install bubblewrap)")


def _bwrap_works(root: bool) -> bool:
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    args = [exe, "--die-with-parent", "--unshare-pid", "--unshare-net", *([] if root else ["--unshare-user"]),
            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        return subprocess.run(args, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _become(uid: int) -> None:
    """Drop every group and become ``uid`` (the grader runs as root; called in a child before exec)."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _other_user_can_run_python() -> bool:
    uid = fresh_uid()
    try:
        return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, timeout=120, cwd="/",
                              preexec_fn=lambda: _become(uid)).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@lru_cache(maxsize=None)
def detect_isolation(requested: str = "auto") -> Isolation:
    """The isolation mode to use: the strongest available for ``auto``; a ValueError when ``requested`` is not."""
    root = os.geteuid() == 0
    if requested not in ("auto", *MODES):
        raise ValueError(f"--isolation {requested!r} is not a mode; use auto, {', '.join(MODES)}.")
    available = ["bubblewrap"] if _bwrap_works(root) else []
    user_ok = root and (requested in ("user", "auto") and not available) and _other_user_can_run_python()
    available += ["user"] if user_ok else []
    available += ["none"]
    if requested == "auto":
        return Isolation(available[0], root)
    if requested not in available:
        why = ("bwrap is not installed or cannot make namespaces here (apt-get install bubblewrap)"
               if requested == "bubblewrap" else "it needs the grader to run as root, with a Python installation "
               "that other users can run (this one is not readable by them)" if root else "it needs root")
        raise ValueError(f"--isolation {requested} is not available: {why}. Available: {', '.join(available)}.")
    return Isolation(requested, root)


# ---------------------------------------------------------------------------------------------------------
# the package with an exercise's banned symbols stubbed on disk


class _Stubber(ast.NodeTransformer):
    """Replace the bodies of the named defs (qualified names inside one module) with ``raise DelegationError``."""

    def __init__(self, module: str, qualnames: set[str]) -> None:
        self.module, self.qualnames, self.scope, self.done = module, qualnames, [], set()

    def _raise(self, qualname: str) -> list[ast.stmt]:
        return ast.parse("from ldm_minimal.course.exercise import DelegationError as _DelegationError\n"
                         f"raise _DelegationError({self.module + '.' + qualname!r})").body

    def _visit_def(self, node):
        qualname = ".".join([*self.scope, node.name])
        inside = any(".".join(self.scope[: i + 1]) in self.qualnames for i in range(len(self.scope)))
        if qualname in self.qualnames or inside:
            self.done.add(qualname if qualname in self.qualnames else ".".join(self.scope))
            node.body = self._raise(qualname)
            return node
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_def

    def visit_ClassDef(self, node):
        qualname = ".".join([*self.scope, node.name])
        self.scope.append(node.name)
        if qualname in self.qualnames:  # a banned class: every method raises
            self.done.add(qualname)
        self.generic_visit(node)
        self.scope.pop()
        return node


def _module_file(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (PACKAGE_DIR / rel / "__init__.py", (PACKAGE_DIR / rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def stub_package(dest: Path, banned: list[str]) -> Path:
    """Copy the package's sources to ``dest/ldm_minimal`` with every banned symbol's body replaced by a raise.

    A symbol is 'ldm_minimal.module.function', '...module.Class.method' or '...module.Class'; it is stubbed where it
    is defined (re-exports are the same object). Raises ValueError for a symbol no module of the package defines.
    """
    target = dest / "ldm_minimal"
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    by_file: dict[Path, tuple[str, set[str]]] = {}
    for symbol in banned:
        if not symbol.startswith("ldm_minimal."):
            continue  # a third-party symbol: stubbed in memory only (exercise.banned_symbols), its files are not ours
        parts = symbol.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            path = _module_file(".".join(parts[:cut]))
            if path is not None:
                module, names = by_file.setdefault(path, (".".join(parts[:cut]), set()))
                names.add(".".join(parts[cut:]))
                break
        else:
            raise ValueError(f"banned symbol {symbol!r} is not in a module of ldm_minimal")
    for path, (module, names) in by_file.items():
        tree = ast.parse(path.read_text())
        stubber = _Stubber(module, names)
        tree = ast.fix_missing_locations(stubber.visit(tree))
        missing = names - stubber.done
        if missing:
            raise ValueError(f"banned symbol(s) {', '.join(sorted(module + '.' + n for n in missing))} not defined in "
                             f"{path.relative_to(PACKAGE_DIR.parent)}")
        (target / path.relative_to(PACKAGE_DIR)).write_text(ast.unparse(tree) + "\n")
    return target


# ---------------------------------------------------------------------------------------------------------
# running one process


@dataclass
class Limits:
    cpu_s: float
    memory_mb: int = 4096
    file_mb: int = 64
    processes: int = 64
    tmpfs_mb: int = 512


@dataclass
class Outcome:
    returncode: int | None
    started: bool  # the harness reached the learner's code
    timed_out: bool
    seconds: float  # from the start of the learner's code to the end
    output: str  # the first bytes of stdout and stderr together
    output_bytes: int
    leftovers: int  # processes still alive after the exercise that had to be killed


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry.name))
                        break
        except (OSError, ValueError):
            continue
    return pids


def kill_user(uid: int) -> int:
    """SIGKILL every process of ``uid`` until none is left; returns how many were killed."""
    killed = 0
    for _ in range(200):
        pids = _processes_of(uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    return killed


def fresh_uid() -> int:
    """An unused unprivileged user id (no process runs as it), far above the ids of real accounts."""
    while True:
        uid = 620000 + secrets.randbelow(300000)
        if not _processes_of(uid):
            return uid


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _bwrap_command(isolation: Isolation, job_dir: Path, pkg: Path, limits: Limits) -> list[str]:
    args = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--new-session"]
    if not isolation.root:
        args.append("--unshare-user")
    # the tmpfs mounts come first: a repository or venv under /tmp (a CI clone) is then bound on top, not hidden
    args += ["--perms", "1777", "--size", str(limits.tmpfs_mb << 20), "--tmpfs", "/tmp",
             "--perms", "0755", "--dir", "/home",
             "--perms", "1777", "--size", str(limits.tmpfs_mb << 20), "--tmpfs", HOME]
    made: set[str] = {"/home"}
    bound: list[str] = []

    def ensure_parents(dest: str) -> None:
        for parent in _ancestors(dest):
            if parent not in made and not any(parent == b or parent.startswith(b + "/") for b in bound):
                args.extend(["--perms", "0755", "--dir", parent])
                made.add(parent)

    def ro(src: str | Path, dest: str | Path | None = None) -> None:
        src, dest = str(src), str(dest or src)
        if dest == str(src) and any(dest == b or dest.startswith(b + "/") for b in bound):
            return  # already visible through an enclosing bind
        ensure_parents(dest)
        args.extend(["--ro-bind", src, dest])
        bound.append(dest)

    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"):
        if os.path.islink(top):
            args.extend(["--symlink", os.readlink(top), top])
        elif os.path.isdir(top):
            ro(top)
    repo, venv = str(REPO_ROOT), os.path.realpath(sys.prefix)
    for prefix in sorted({sys.base_prefix, sys.prefix, *[p for p in sys.path if p and os.path.isdir(p)]}):
        real = os.path.realpath(prefix)
        inside_repo = real == repo or real.startswith(repo + "/")
        if inside_repo and not (real == venv or real.startswith(venv + "/")):
            continue  # the repository's own folders (tests/, solutions/, ...) stay out; only its venv is needed
        if os.path.isdir(real) and real != "/":
            ro(real)
    if os.path.realpath(sys.prefix) != sys.prefix:
        ro(os.path.realpath(sys.prefix), sys.prefix)
    ro(pkg, PACKAGE_DIR)  # the stubbed copy, over the package itself
    if (REPO_ROOT / "data").is_dir():
        ro(REPO_ROOT / "data")
    ro(job_dir, "/job")
    args += ["--proc", "/proc", "--dev", "/dev", "--chdir", HOME, "--"]
    return args


def _limit(cpu_s: float, memory_mb: int, file_mb: int, processes: int | None, uid: int | None):
    def apply() -> None:  # runs in the child between fork and exec
        for what, value in ((resource.RLIMIT_CPU, int(cpu_s) + 1), (resource.RLIMIT_AS, memory_mb << 20),
                            (resource.RLIMIT_FSIZE, file_mb << 20), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(what, (value, value))
        if processes is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        if uid is not None:
            _become(uid)

    return apply


def run_sandboxed(job_dir: Path, banned: list[str], isolation: Isolation, limits: Limits, env: dict[str, str],
                  ready_timeout: float, run_timeout: float, output_cap: int = 64 << 10) -> tuple[Outcome, Path]:
    """Run the harness on ``job_dir`` (job.json, cases.safetensors) in a fresh isolated process.

    ``run_timeout`` counts from the moment the harness starts the learner's code (the harness's READY line);
    ``ready_timeout`` bounds the start-up before it. Returns the outcome and the path of the results file the
    harness wrote (through an inherited file descriptor, so it lies outside everything the code can see).
    """
    work = job_dir.parent
    pkg_root = work / "pkg"
    pkg = stub_package(pkg_root, banned)
    result = work / "result.safetensors"
    fd = os.open(result, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    uid = fresh_uid() if isolation.root and isolation.mode in ("bubblewrap", "user") else None
    job_dir.chmod(0o755)
    for path in job_dir.iterdir():  # readable by the sandbox's user, writable by nobody but the grader
        path.chmod(0o644)
    env = {**env, "LDM_RESULT_FD": str(fd), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
    harness = [sys.executable, "-P", "-m", "ldm_minimal.course.harness"]
    if isolation.mode == "bubblewrap":
        command = [*_bwrap_command(isolation, job_dir, pkg, limits), *harness, "/job"]
        env.update(HOME=HOME, **({"LDM_SANDBOX_UID": str(uid)} if uid is not None else {}))
        preexec = _limit(limits.cpu_s, limits.memory_mb, limits.file_mb, limits.processes if uid else None, None)
        cwd = None
    else:
        home = work / "home"
        home.mkdir()
        for path in (work, home, pkg_root):
            path.chmod(0o755)
        if uid is not None:
            os.chown(home, uid, uid)
        env.update(HOME=str(home), PYTHONPATH=str(pkg_root))
        command = [*harness, str(job_dir)]
        preexec = _limit(limits.cpu_s, limits.memory_mb, limits.file_mb, limits.processes if uid else None, uid)
        cwd = str(home)
    chunks: list[bytes] = []
    total = [0]
    ready = threading.Event()
    ready_at = [0.0]

    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, pass_fds=(fd,), preexec_fn=preexec, start_new_session=True)
    finally:
        os.close(fd)

    def drain() -> None:
        tail = b""  # the last bytes before this block, so a READY line split across blocks is still seen
        while True:
            block = proc.stdout.read1(65536)
            if not block:
                break
            if not ready.is_set() and READY in tail + block:
                ready_at[0] = time.monotonic()
                ready.set()
                block = (tail + block).replace(READY, b"", 1)[len(tail):] if READY in block else block
            tail = (tail + block)[-len(READY):]
            total[0] += len(block)
            room = output_cap - sum(map(len, chunks))
            if room > 0:
                chunks.append(block[:room])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    timed_out = False
    start = time.monotonic()
    while proc.poll() is None:
        now = time.monotonic()
        if (not ready.is_set() and now - start > ready_timeout) or (ready.is_set() and now - ready_at[0] > run_timeout):
            timed_out = True
            break
        time.sleep(0.01)
    end = time.monotonic()
    if timed_out or isolation.mode == "none":
        try:  # the bwrap monitor (its PID namespace dies with it), or the process group the code started in
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    leftovers = kill_user(uid) if uid is not None else 0
    reader.join(timeout=5)
    out = Outcome(returncode=proc.returncode, started=ready.is_set(), timed_out=timed_out,
                  seconds=round(end - ready_at[0], 3) if ready.is_set() else 0.0,
                  output=b"".join(chunks).decode("utf-8", "replace"), output_bytes=total[0], leftovers=leftovers)
    return out, result
