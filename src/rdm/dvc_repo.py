"""DVC as the flows drive it: the pipeline's stages in dependency order, one stage at a time, and the
recording and pushing of data versions. DVC stays the one judge of what is stale; its commands run as
subprocesses so that their output can be streamed into the flow run's log."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from rdm.errors import UserError
from rdm.files import exclusive

Log = Callable[[str], None]
DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
"""The dvc installed beside this Python (the project's), else the first on PATH."""
SKIPPED = re.compile(r"Stage '(?P<stage>[^']+)' didn't change, skipping")
RESTORED = re.compile(r"Stage '(?P<stage>[^']+)' is cached - skipping run")
TRANSIENT = re.compile(
    r"Unable to acquire lock|rwlock|Could not connect to the endpoint URL|Read timeout on endpoint|"
    r"Connection (refused|reset|aborted)|Temporary failure in name resolution|SlowDown|"
    r"Service Unavailable|database is locked|is being changed by pid|Can't init WAL: Kind\(WouldBlock\)",
    re.IGNORECASE,
)


class DvcError(UserError):
    """A DVC command failed; the message holds its last lines of output."""


@dataclass(frozen=True)
class StageRun:
    stage: str
    outcome: str
    """'ran', 'skipped' (nothing changed) or 'restored' (outputs checked out from DVC's run cache)."""
    seconds: float


def is_transient(error: BaseException) -> bool:
    """Failures worth another try: a lock held by a concurrent DVC command or refresh, a shard open in
    another process, a network or S3 hiccup, a busy SQLite store. Not a bad param, a missing file or a
    failing stage. Stage errors reach the flow as DVC's output, so they are told apart by message."""
    return bool(TRANSIENT.search(str(error)))


def pipeline_lock(root: Path) -> AbstractContextManager[None]:
    """Held by every flow run that changes the project's data (train-rdm, the refresh): they wait
    for each other instead of rewriting files under one another."""
    return exclusive(root / ".dvc" / "tmp" / "rdm-pipeline.lock", f"the pipeline data of {root}", wait=True)


def dvc(args: Sequence[str], root: Path, log: Log = print) -> str:
    """Run `dvc *args` in `root`, streaming each line of its output to `log`; returns the output."""
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "TQDM_MININTERVAL": "10"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [DVC, *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # its own group, so a cancelled flow run takes the stage down with it
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for raw in process.stdout:
            for line in raw.replace("\r", "\n").splitlines():
                if line.strip():
                    lines.append(line)
                    log(line)
        process.wait()
    finally:
        if process.poll() is None:
            _end_group(process)
    if process.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise DvcError(
            f"`dvc {' '.join(args)}` failed in {root} (exit {process.returncode}, "
            f"{time.perf_counter() - started:.0f} s):\n{tail}"
        )
    return "\n".join(lines)


def _end_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def stages(root: Path) -> list[str]:
    """The pipeline's stages (`dvc.yaml` files under `root`), each after the stages it depends on, as
    `dvc repro` names them from `root`. `dvc add`ed data is not a stage to run (see version_sources)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        ordered = [s for s in reversed(list(nx.topological_sort(graph))) if not s.is_data_source]
    names = []
    for stage in ordered:
        dvc_file = Path(stage.path).relative_to(root.resolve())
        names.append(stage.name if dvc_file == Path("dvc.yaml") else f"{dvc_file}:{stage.name}")
    return names


def reproduce(root: Path, stage: str, log: Log = print) -> StageRun:
    """`dvc repro` of one stage alone (its upstream stages are the caller's earlier calls)."""
    started = time.perf_counter()
    output = dvc(["repro", "--single-item", stage], root, log)
    if SKIPPED.search(output):
        outcome = "skipped"
    elif RESTORED.search(output):
        outcome = "restored"
    else:
        outcome = "ran"
    return StageRun(stage, outcome, round(time.perf_counter() - started, 2))


def tracked_sources(root: Path) -> list[str]:
    """The data added with `dvc add` (one `.dvc` file each), as paths relative to `root`."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return sorted(
            str(Path(out.fs_path).relative_to(root.resolve()))
            for stage in repo.index.stages
            if stage.is_data_source
            for out in stage.outs
        )


def version_sources(root: Path, log: Log = print) -> list[str]:
    """Record the current content of every `dvc add`ed source (a no-op for unchanged ones)."""
    targets = tracked_sources(root)
    if targets:
        dvc(["add", *targets], root, log)
    return targets


def record(root: Path, stages: Sequence[str], log: Log = print) -> None:
    """Write the current outputs of `stages` into dvc.lock (after they were changed outside repro)."""
    dvc(["commit", "--force", *stages], root, log)


def default_remote(root: Path) -> str | None:
    output = subprocess.run(
        [DVC, "remote", "default"], cwd=root, capture_output=True, text=True, check=False
    ).stdout.strip()
    return output or None


def push(root: Path, log: Log = print, remote: str | None = None) -> str | None:
    """`dvc push` to `remote` (the default remote when None); returns the remote's name, None when the
    project has no remote configured."""
    remote = remote or default_remote(root)
    if remote is None:
        log("dvc: no default remote configured; nothing pushed (`dvc remote add -d NAME URL`)")
        return None
    dvc(["push", "--remote", remote], root, log)
    return remote
