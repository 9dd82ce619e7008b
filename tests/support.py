"""Helpers shared by tests: the repository root, free ports, and files of every kind ingestion meets."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from PIL import Image

if TYPE_CHECKING:
    import pytest
    from mlflow import MlflowClient

    from rdm.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "generate": {
        "image_size": 32,
        "train_images": 24,
        "d_train_images": 24,
        "style_images": 6,
        "eval_prompts": 5,
    },
    "autoencoder": {
        "image_size": 32,
        "block_out_channels": [8, 16, 16],
        "steps": 20,
        "batch_size": 8,
    },
    "neighbors": {"k": 4, "duplicate_threshold": 0.999},
    "train": {
        "unet": {"block_out_channels": [32, 32], "cross_attention": [False, True]},
        "batch_size": 8,
        "max_steps": 12,
        "val_images": 4,
        "val_every_n_steps": 6,
        "checkpoint_every_n_steps": 4,
        "sample_steps": 2,
        "log_every_n_steps": 2,
        "warmup_steps": 2,
        "k": 4,
        "k_min": 2,
    },
    "sample": {"per_style": 3, "floor_per_style": 2, "k": 5, "steps": 4, "batch_size": 16},
    "evaluate": {"classifier": {"epochs": 200}},
}
"""The project's params shrunk to a few dozen images and a few training steps (tests and CI)."""


def deep_update(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in, section by section (nested dicts merged, other values replaced)."""
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = deep_update(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


TRACKING = "sqlite:///mlflow.db"
"""Tests track into an SQLite store in their own working folder."""


def tracking_client(root: Path) -> MlflowClient:
    """A client of the store in `root`, by absolute path: MLflow caches stores by URI string."""
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def write_params(root: Path, name: str = "params.yaml", **changes: dict) -> Path:
    """The project's params shrunk by TINY (a 5-epoch CLIP, tracking in ./mlflow.db), plus `changes`,
    written to `root/name`."""
    base = deep_update(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), TINY)
    params = deep_update(base, {"clip": {"epochs": 5}, "tracking": {"tracking_uri": TRACKING}} | changes)
    path = root / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def work_in(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test in `root`, tracking into its own store whatever MLFLOW_TRACKING_URI the shell has."""
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def rdm_env() -> dict[str, str]:
    """The environment for `rdm` subprocesses: this Python's scripts first, no outside tracking URI."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_pipeline(config: Config, train_model: bool = False) -> None:
    """generate -> prepare -> clip -> embed -> neighbors -> autoencoder -> reconstruct (-> train), in the
    current folder."""
    from rdm.stages import autoencoder, clip, embed, generate, neighbors, prepare, reconstruct, train

    generate.run(config, progress=False)
    prepare.run(config.prepare, config.s3, progress=False)
    clip.run(config.clip, Path(config.prepare.out), config.sample.style_text, progress=False)
    from rdm.evaluation.split import classifier_share

    keep_out = classifier_share(config)  # as `rdm embed`: the style classifier's images stay out
    embed.run(config.embed, config.store, Path(config.clip.out), Path(config.prepare.out), False, keep_out)
    neighbors.run(config.neighbors, config.embed, Path(config.clip.out), Path(config.prepare.out), False)
    autoencoder.run(config.autoencoder, Path(config.prepare.out), progress=False)
    reconstruct.run(config.autoencoder, Path(config.prepare.out))
    if train_model:
        train.run(config, progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 128)], axis=-1)
    noisy = base + rng.normal(0, 10, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


MESSY_CAPTIONS = {"alpha/good.txt"}


def messy_files() -> dict[str, tuple[bytes, str | None]]:
    """Relative path -> (bytes, expected rejection reason or None when it should be accepted).

    One file of every kind ingestion has to handle, in ImageFolder layout (`<style>/<file>`).
    """
    good_png = _encode(_photo(64, 48, 1), "PNG")
    good_jpg = _encode(_photo(64, 48, 2), "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated = _encode(_photo(80, 40, 3), "JPEG", exif=exif)
    rgba = _photo(48, 48, 4).convert("RGBA")
    alpha = np.full((48, 48), 255, np.uint8)
    alpha[:, :24] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    grey16 = Image.fromarray(np.full((40, 40), 32768, np.uint16))
    bomb = Image.new("1", (12_000, 12_000))
    return {
        "alpha/good.png": (good_png, None),
        "alpha/good.txt": (b"a gradient, quite good\n", None),
        "alpha/good.jpg": (good_jpg, None),
        "alpha/good.webp": (_encode(_photo(64, 64, 5), "WEBP", quality=90), None),
        "alpha/rotated.jpg": (rotated, None),
        "alpha/rgba.png": (_encode(rgba, "PNG"), None),
        "alpha/palette.png": (_encode(_photo(40, 40, 6).convert("P"), "PNG"), None),
        "alpha/grey.png": (_encode(_photo(40, 40, 7).convert("L"), "PNG"), None),
        "beta/grey16.png": (_encode(grey16, "PNG"), None),
        "beta/cmyk.jpg": (_encode(_photo(40, 40, 8).convert("CMYK"), "JPEG"), None),
        "beta/big.png": (_encode(_photo(1200, 600, 9), "PNG"), None),
        "beta/truncated.jpg": (good_jpg[: len(good_jpg) // 2], "truncated"),
        "beta/empty.jpg": (b"", "empty"),
        "beta/notes.jpg": (b"these are my notes, not a picture\n" * 20, "not_an_image"),
        "beta/tiny.png": (_encode(_photo(8, 8, 10), "PNG"), "too_small"),
        "beta/bomb.png": (_encode(bomb, "PNG", optimize=True), "too_large"),
        "beta/copy-of-good.png": (good_png, "duplicate"),
    }


def debian_tool(binary: str, package: str) -> str:
    """The path of `binary`, installed from Debian's `package` with apt on first use (the test set-up
    of a fresh machine); fails the test, naming the package, when that is impossible."""
    found = shutil.which(binary)
    if found is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", package],
            capture_output=True,
            check=False,
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which(binary)
    if found is None:
        raise RuntimeError(f"{binary} is not installed and `apt-get install -y {package}` failed; install it")
    return found


def run_ok(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    """Run a command as a user would; fail the test with its output unless it succeeds."""
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def dvc_env(tmp_path: Path) -> dict[str, str]:
    """The environment for git and DVC in a test project: this Python's tools, no analytics, DVC's
    site cache and a git identity in the test's folder."""
    return rdm_env() | {
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }


def clone_project(tmp_path: Path, **changes: dict) -> tuple[Path, dict[str, str]]:
    """The working tree as git sees it (tracked and unignored files) in a fresh git repository under
    `tmp_path/repo`, with params shrunk by TINY plus `changes` and the DVC remote in `tmp_path/remote`;
    returns the folder and the environment to run its tools in."""
    repo = tmp_path / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for rel in listed:
        if (REPO_ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, repo / rel)
    params = deep_update(deep_update(yaml.safe_load((repo / "params.yaml").read_text()), TINY), changes)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dvc_env(tmp_path)
    for args in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "clone"],
        ["dvc", "remote", "modify", "local", "url", str(tmp_path / "remote")],
    ):
        subprocess.run(args, cwd=repo, env=env, capture_output=True, check=True)
    return repo, env


RAY = str(Path(sys.executable).parent / "ray")
"""The `ray` command of this environment's Ray."""


@contextlib.contextmanager
def ray_cluster(workers: int = 2, cpus_per_worker: int = 1) -> Iterator[str]:
    """A Ray cluster on 127.0.0.1 as `ray start` makes one: a head that runs nothing (0 CPUs) and
    `workers` worker nodes; yields its address (for RAY_ADDRESS). Each node is a `ray start --block`
    process this function started, stopped by its id (it stops the Ray processes it spawned)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = ["--include-dashboard=false"]
    node = [
        "--block",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        "--object-store-memory=200000000",
    ]
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's unix sockets want a short path
    # Ray turns token auth on wherever an earlier local ray.init() left ~/.ray/auth_token; the
    # nodes and the drivers of a test (which set RAY_AUTH_MODE too) agree on none
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    started = [
        subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp}", *head, *node],
            env=env,
            cwd=temp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        _wait_for_port(address, started[0])
        for joined in range(1, workers + 1):  # one at a time: nodes starting together race for ports
            started.append(
                subprocess.Popen(
                    [
                        RAY,
                        "start",
                        f"--address={address}",
                        f"--num-cpus={cpus_per_worker}",
                        *node,
                        *own_ports(),
                    ],
                    env=env,
                    cwd=temp,  # not the test's folder: relative paths must be resolved by the driver
                    stdout=(Path(temp) / f"worker-{joined}.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
            )
            _wait_for_cpus(address, joined * cpus_per_worker, Path(temp) / f"worker-{joined}.log")
        yield address
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(temp, ignore_errors=True)


def own_ports() -> list[str]:
    """A free port for the one service of a Ray node with a fixed default port (its dashboard agent):
    a second node on the same machine otherwise fails to start."""
    return [f"--dashboard-agent-listen-port={free_port()}"]


def _wait_for_port(address: str, process: subprocess.Popen, timeout: float = 120) -> None:
    host, port = address.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no Ray head at {address} after {timeout} s")


def _wait_for_cpus(address: str, cpus: int, log: Path, timeout: float = 120) -> None:
    """Until the workers have joined: `ray status` lists their CPUs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run(
            [RAY, "status", f"--address={address}"], capture_output=True, text=True, check=False
        ).stdout
        if f"/{cpus}.0 CPU" in status:
            return
        time.sleep(1)
    raise TimeoutError(
        f"the Ray cluster at {address} did not reach {cpus} CPUs in {timeout} s; "
        f"the last node's log ends: {log.read_text()[-2000:]}"
    )
