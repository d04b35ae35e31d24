"""Two CPU processes (gloo) under torchrun: DDP through accelerate, only rank 0 writes."""

import json
import socket
import subprocess
import sys

from tests.train.test_trainer import squad_file  # noqa: F401 - fixture


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_training(tmp_path, squad_file):  # noqa: F811
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "bitswitch.cli", "train", "--model", "tiny-gpt2", "--data",
           squad_file, "--steps", "3", "--batch-size", "2", "--device", "cpu", "--profiles", "fp", "w4a8",
           "--out", str(out), "--set", "max_length=160"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2]                  # one writer, no duplicates
    assert (out / "adapters" / "adapters.safetensors").is_file()
    assert not list(out.glob(".checkpoint-*"))
