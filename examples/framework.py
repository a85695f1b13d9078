#!/usr/bin/env python3
"""A Wasmos framework in Python, standard library only, on the HTTPS/JSON scheduler API.

It subscribes, launches COUNT copies of a bundle from the offers it gets, declines what it
does not need, acknowledges each status update, and exits once every copy has ended.

    wasmos dev --data-dir /tmp/wasmos-p --listen 127.0.0.1:0 &
    HASH=$(wasmos --config /tmp/wasmos-p/client.toml bundle push hello.wasm)
    python3 examples/framework.py --config /tmp/wasmos-p/client.toml $HASH 3 hi there

The master's HTTPS address and the certificates come from client.toml (`http`, `ca`, `cert`,
`key`). Every connection makes sure the peer is a master of the cluster (its certificate names
`master.wasmos` and a `wasmos://master/` URI) before it sends a byte of a request. Events
arrive as one JSON object per line on the response to SUBSCRIBE; every other call is a POST
naming the stream in the `Wasmos-Stream-Id` header (docs/frameworks.md).
"""

import argparse
import http.client
import json
import os
import ssl
import sys
import tomllib

API = "/api/v1/scheduler"
# The DNS name in every master certificate (and in no other: tenants', operators' and agents'
# certificates are client-only); the handshake verifies it whatever address is dialled.
MASTER_NAME = "master.wasmos"


def load_config(path):
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    base = os.path.dirname(os.path.abspath(path))
    if "http" not in cfg:
        sys.exit(f"{path} has no `http` address: start the master with an HTTPS listener")
    host, _, port = cfg["http"].rpartition(":")
    files = {k: os.path.join(base, cfg[k]) for k in ("ca", "cert", "key")}
    return host.strip("[]"), int(port), files


def tls_context(files):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(files["ca"])
    ctx.load_cert_chain(files["cert"], files["key"])
    # The cluster CA signs every identity; only a master's certificate is a server one
    # (serverAuth) naming MASTER_NAME, which the handshake verifies (`MasterConnection`).
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


def check_master(sock):
    """Also require the master's URI in the verified certificate (before anything is sent)."""
    cert = sock.getpeercert()
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    if not any(u.startswith("wasmos://master/") for u in uris):
        sock.close()
        sys.exit(f"the peer is not a master of this cluster: {uris}")


class MasterConnection(http.client.HTTPSConnection):
    """An HTTPS connection to the configured address that completes only with a master.

    The TLS handshake verifies the server's certificate against the cluster CA under the name
    MASTER_NAME (not the address dialled), then `check_master` reads its URI; only then can
    `request` send anything. Reconnections of a kept-alive connection come here too.
    """

    def connect(self):
        http.client.HTTPConnection.connect(self)  # TCP only
        try:
            self.sock = self._context.wrap_socket(self.sock, server_hostname=MASTER_NAME)
        except ssl.SSLCertVerificationError as e:
            self.sock.close()
            sys.exit(f"{self.host}:{self.port} is not a master of this cluster: {e.verify_message}")
        check_master(self.sock)


class Scheduler:
    """The connection for calls (the subscription has its own)."""

    def __init__(self, host, port, ctx):
        self.host, self.port, self.ctx = host, port, ctx
        self.stream = None
        self.calls = None

    def subscribe(self, body):
        conn = MasterConnection(self.host, self.port, context=self.ctx)
        conn.request("POST", API, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            sys.exit(f"subscription refused: {resp.status} {resp.read().decode()}")
        self.stream = resp.getheader("Wasmos-Stream-Id")
        return resp

    def call(self, body):
        for attempt in range(2):
            if self.calls is None:
                self.calls = MasterConnection(self.host, self.port, context=self.ctx)
            try:
                headers = {"Content-Type": "application/json", "Wasmos-Stream-Id": self.stream}
                self.calls.request("POST", API, json.dumps(body), headers)
                resp = self.calls.getresponse()
                text = resp.read().decode()
                if resp.status != 202:
                    sys.exit(f"call {body} refused: {resp.status} {text}")
                return
            except (http.client.HTTPException, OSError):
                # A kept-alive connection the server closed: open a new one, once.
                self.calls.close()
                self.calls = None
                if attempt == 1:
                    raise


def spec(bundle, args):
    return {
        "name": "python-task", "bundle": bundle, "args": args, "env": [],
        "resources": {"cpu_millis": 250, "mem_bytes": 64 << 20, "disk_bytes": 16 << 20, "scalars": {}},
        "timeout_ms": 30000, "max_output_bytes": 1 << 20, "on_output_limit": "Truncate",
        "cpu_budget_ms": None, "stdin": None, "net_allow": [], "mounts": [], "inputs": [],
        "role": None, "qos": "Guaranteed", "priority": 0, "cpu_limit_millis": None,
        "mem_limit_bytes": None, "outputs_dir": None,
    }


def fits(need, have):
    return all(need[k] <= have[k] for k in ("cpu_millis", "mem_bytes", "disk_bytes"))


def minus(have, need):
    return {**have, **{k: have[k] - need[k] for k in ("cpu_millis", "mem_bytes", "disk_bytes")}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.environ.get("WASMOS_CONFIG", "client.toml"))
    p.add_argument("--role")
    p.add_argument("bundle")
    p.add_argument("count", type=int)
    p.add_argument("args", nargs="*")
    a = p.parse_args()
    host, port, files = load_config(a.config)
    api = Scheduler(host, port, tls_context(files))
    task = spec(a.bundle, a.args)
    need = task["resources"]
    to_launch, running, ended, failed, request = a.count, set(), set(), 0, 0
    seen = {}

    events = api.subscribe({"Subscribe": {
        "name": "python-example", "role": a.role, "revocable": False,
        "framework": None, "failover_timeout_ms": None}})
    for line in events:
        if not line.strip():
            continue
        event = json.loads(line)
        kind, body = (event, None) if isinstance(event, str) else next(iter(event.items()))
        if kind == "Subscribed":
            print(f"subscribed as fw-{body['framework']} in role {body['role']}", flush=True)
        elif kind == "Offers":
            for offer in body:
                left = offer["unreserved"]
                for r in offer["reserved"].values():
                    left = {k: left[k] + r[k] for k in ("cpu_millis", "mem_bytes", "disk_bytes")}
                specs = []
                while to_launch > len(specs) and fits(need, left):
                    left = minus(left, need)
                    specs.append(task)
                if not specs:
                    api.call({"Decline": {"offers": [offer["id"]], "refuse_ms": 30000}})
                    continue
                request += 1
                to_launch -= len(specs)
                print(f"accepting o-{offer['id']} on {offer['agent']} for {len(specs)} task(s)", flush=True)
                api.call({"Accept": {"request": request, "offers": [offer["id"]],
                                     "operations": [{"Launch": specs}], "refuse_ms": None}})
            if to_launch == 0:
                api.call("Suppress")
        elif kind == "Accepted":
            running.update(body["tasks"])
            print("launched " + ", ".join(f"t-{t}" for t in body["tasks"]), flush=True)
        elif kind == "Update":
            task_id, status = body["task"], body["status"]
            if body["update"]:
                api.call({"Acknowledge": {"task": task_id, "update": body["update"]}})
            # Updates arrive at least once: one resent before its acknowledgement landed
            # carries a number already seen.
            if body["update"] and body["update"] <= seen.get(task_id, 0):
                continue
            seen[task_id] = max(seen.get(task_id, 0), body["update"])
            print(f"t-{task_id}: {status['state'].lower()}", flush=True)
            if status["state"] in ("Finished", "Failed", "Killed", "Lost", "Error"):
                running.discard(task_id)
                if task_id not in ended:
                    ended.add(task_id)
                    failed += status.get("exit_code") != 0
                if not running and to_launch == 0:
                    break
        elif kind == "Error":
            sys.exit(f"the master refused request {body['request']}: {body['message']}")
        elif kind == "NotLeader":
            sys.exit(f"this master does not lead; the leader is at {body['addr']}")
    else:
        sys.exit("the master ended the event stream")
    api.call("Teardown")
    print(f"all {len(ended)} task(s) ended, {failed} without exit code 0", flush=True)


if __name__ == "__main__":
    main()
