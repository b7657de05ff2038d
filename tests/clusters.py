"""Spark processes the tests start on loopback, each stopped by its PID: a Spark Connect server and a standalone
cluster (a master and workers, separate JVMs, from pyspark's own launch scripts), plus a Python that has our
dependencies but not our code, so that executors see only what is shipped to them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
BIN = Path(sys.executable).parent
STARTUP_S = 180


def isolated_python(directory: Path) -> Path:
    """A venv that sees the project venv's third-party packages but not its editable install of megascience."""
    if not (directory / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
        site = next((directory / "lib").glob("python3*/site-packages"))
        # a plain path entry: .pth files there (the editable-install hook) are not processed
        (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return directory / "bin" / "python"


def clean_environment(python: Path, **extra: str) -> dict[str, str]:
    """This process's environment without the source tree on PYTHONPATH, Python workers running `python`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    return {**env, "PYSPARK_PYTHON": str(python), "PYSPARK_DRIVER_PYTHON": str(python), "SPARK_LOCAL_IP": "127.0.0.1", **extra}


def sees_our_code(python: Path, cwd: Path) -> bool:
    """Whether `python`, in the environment the started processes get, can import our packages."""
    probe = subprocess.run([str(python), "-c", "import megascience.jobs"], capture_output=True, env=clean_environment(python), cwd=cwd)
    return probe.returncode == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Started:
    """A process this test started (in its own process group), with the log it writes."""

    name: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """SIGTERM to the process's group (the JVM and the Python workers it forked), SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def start(name: str, command: list[str], log: Path, env: dict[str, str], cwd: Path) -> Started:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    return Started(name, process, log)


def wait_for_line(started: Started, text: str, timeout_s: float = STARTUP_S) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if text in started.log.read_text(errors="replace"):
            return
        if started.process.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"{started.name} did not start (no {text!r} in its log):\n{tail(started.log)}")


def tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- {path} ---\n{text[-chars:]}"


@dataclass
class Cluster:
    """Started processes and where their logs are; `logs()` is what a failed assertion shows."""

    processes: list[Started] = field(default_factory=list)
    log_dirs: list[Path] = field(default_factory=list)
    url: str = ""

    def logs(self, chars: int = 3000) -> str:
        files = [p.log for p in self.processes]
        for directory in self.log_dirs:  # executors' stdout/stderr under each worker's work dir
            files += sorted(path for path in directory.rglob("std*") if path.is_file())
        return "\n".join(tail(path, chars) for path in files)


@contextmanager
def connect_server(work: Path, python: Path, settings: dict[str, str], master: str = "local[2]") -> Iterator[Cluster]:
    """A Spark Connect server (its driver on `master`) on a loopback port whose Python workers run `python`."""
    port = free_port()
    command = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master", master,
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", f"spark.connect.grpc.binding.port={port}",
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.ui.enabled=false",
        *[arg for key, value in settings.items() for arg in ("--conf", f"{key}={value}")],
    ]
    server = start("Spark Connect server", command, work / "connect-server.log", clean_environment(python), work)
    try:
        wait_for_line(server, "Spark Connect server started")
        yield Cluster([server], url=f"sc://127.0.0.1:{port}")
    finally:
        server.stop()


@contextmanager
def standalone_cluster(work: Path, python: Path, workers: int = 2, memory: str = "2g") -> Iterator[Cluster]:
    """A standalone master and `workers` workers of one core each, every one a JVM of its own, on loopback."""
    port = free_port()
    env = clean_environment(python)
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    cluster = Cluster(url=f"spark://127.0.0.1:{port}")
    with ExitStack() as stack:
        master = start(
            "master",
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port())],
            work / "master.log",
            env,
            work,
        )
        stack.callback(master.stop)
        cluster.processes.append(master)
        wait_for_line(master, "I have been elected leader")
        for number in range(workers):
            work_dir = work / f"worker{number}"
            worker = start(
                f"worker {number}",
                [
                    spark_class, "org.apache.spark.deploy.worker.Worker", cluster.url,
                    "--host", "127.0.0.1", "--webui-port", str(free_port()),
                    "--cores", "1", "--memory", memory, "--work-dir", str(work_dir),
                ],
                work / f"worker{number}.log",
                env,
                work,
            )
            stack.callback(worker.stop)
            cluster.processes.append(worker)
            cluster.log_dirs.append(work_dir)
        for worker in cluster.processes[1:]:
            wait_for_line(worker, "Successfully registered with master")
        yield cluster
