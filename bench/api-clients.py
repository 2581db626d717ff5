#!/usr/bin/env python3
"""Clients submitting runs through `sandflow serve`'s API, for
bench/distributed.sh: CLIENTS threads, each with one kept-alive HTTP
connection, each posting RUNS runs of one workflow (`POST /api/runs`),
one after another, waiting for each 201. Stdlib only.

    api-clients.py [--ready FILE] ADDR CLIENTS RUNS WORKFLOW FILE...

With `--ready FILE`, the clients connect first, then write FILE and wait
for a line on stdin before posting: a benchmark starts its clock then, so
that what it times is the server taking runs, not Python starting (about
0.1 s of CPU a process, on the machine being measured).

WORKFLOW and every FILE it reads are named as `sandflow submit` names them
(here: absolute paths), each with its SHA-256; a file the server asks for
(409 `missing`) is uploaded (`PUT /api/files/SHA256`) and the run posted
again, as `sandflow --server URL submit` does. Exits 1 with the server's
answer at the first run not queued.
"""
import hashlib
import http.client
import json
import sys
import threading


def main():
    args = sys.argv[1:]
    ready = None
    if args[0] == "--ready":
        ready, args = args[1], args[2:]
    addr, clients, runs, workflow, *files = args
    host, port = addr.rsplit(":", 1)
    hashes, contents = {}, {}
    for path in [workflow, *files]:
        with open(path, "rb") as f:
            contents[path] = f.read()
        hashes[path] = hashlib.sha256(contents[path]).hexdigest()
    body = json.dumps({"workflow": workflow, "files": hashes, "input": None})
    failed = []

    go = threading.Event()

    def client(conn):
        go.wait()
        queued = 0
        while queued < int(runs):
            conn.request("POST", "/api/runs", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            text = answer.read()
            if answer.status == 201:
                queued += 1
                continue
            missing = json.loads(text).get("missing") if answer.status == 409 else None
            if not missing:
                failed.append(f"{answer.status} {text.decode(errors='replace')}")
                return
            for wanted in missing:
                conn.request("PUT", f"/api/files/{wanted['sha256']}", contents[wanted["path"]], {"Content-Type": "application/octet-stream"})
                answer = conn.getresponse()
                text = answer.read()
                if answer.status // 100 != 2:
                    failed.append(f"{answer.status} {text.decode(errors='replace')}")
                    return

    conns = [http.client.HTTPConnection(host, int(port)) for _ in range(int(clients))]
    for conn in conns:
        conn.connect()
    threads = [threading.Thread(target=client, args=(conn,)) for conn in conns]
    for t in threads:
        t.start()
    if ready:
        with open(ready, "w") as f:
            f.write("ready\n")
        sys.stdin.readline()
    go.set()
    for t in threads:
        t.join()
    if failed:
        print(f"a run was not queued: {failed[0]}", file=sys.stderr)
        sys.exit(1)


main()
