"""``ringstack-ctl collect-logs``: one archive with what a bug report needs from every node.

Layout: ``status.json`` (``ringstack-ctl status -f json``), then per live node
``nodes/<uuid>/status.json`` (its ops status), ``nodes/<uuid>/metrics.txt`` (its /metrics, when
its ops endpoint answers from here) and ``nodes/<uuid>/log.txt`` (the end of its log file, sent by
the node itself over the bus, so nodes on other machines are included without SSH); errors met on
the way go to ``errors.txt`` rather than stopping the collection.
"""

from __future__ import annotations

import io
import tarfile
import time
import urllib.request
from pathlib import Path

import orjson

from bus.errors import RingstackError
from mgmt.cli.status import cluster_status, send_ops
from mgmt.config import NodeConfig
from mgmt.ops import OPS_LOGS, OPS_STATUS


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def collect(config: NodeConfig, output: Path) -> str:
    status = cluster_status(config)
    errors: list[str] = []
    partial = output.with_name(f".{output.name}.partial")
    nodes = 0
    with tarfile.open(partial, "w:gz") as tar:
        _add(tar, "status.json", orjson.dumps(status.model_dump(), option=orjson.OPT_INDENT_2))
        for node in status.nodes:
            if node.state != "alive":
                continue
            nodes += 1
            base = f"nodes/{node.uuid}"
            try:
                _add(tar, f"{base}/status.json", orjson.dumps(send_ops(config, node.uuid, OPS_STATUS)))
                logs = send_ops(config, node.uuid, OPS_LOGS, timeout=30)
                _add(tar, f"{base}/log.txt", logs["text"].encode())
                if logs.get("error") or not logs.get("logFile"):
                    errors.append(f"{node.uuid}: log: {logs.get('error') or 'no log_file configured'}")
            except RingstackError as exc:
                errors.append(f"{node.uuid}: {exc.code}: {exc.message}")
            if node.opsAddress:
                try:
                    with urllib.request.urlopen(f"http://{node.opsAddress}/metrics", timeout=5) as r:
                        _add(tar, f"{base}/metrics.txt", r.read())
                except OSError as exc:
                    errors.append(f"{node.uuid}: metrics from {node.opsAddress}: {exc}")
        if errors:
            _add(tar, "errors.txt", ("\n".join(errors) + "\n").encode())
    partial.replace(output)
    return f"{nodes} node(s), {len(errors)} error(s)"
