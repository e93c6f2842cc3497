#!/usr/bin/env python3
"""How long after `kill -9` a process's open connections close, by how much memory it holds.

The kernel frees a killed process's memory before it closes its files (do_exit runs exit_mm
before exit_files), so a client of a dead squall process waits that long for the error that sends
it elsewhere (benches/RESULTS.md, "failover at a million users"). Usage: python3 teardown.py MB
"""
import os
import signal
import socket
import sys
import time

mb = int(sys.argv[1]) if len(sys.argv) > 1 else 500
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
port = server.getsockname()[1]
pid = os.fork()
if pid == 0:
    held = bytearray(mb << 20)
    for i in range(0, len(held), 4096):  # touch every page: resident, not just reserved
        held[i] = 1
    conn, _ = server.accept()
    time.sleep(3600)
    sys.exit(0)
server.close()
client = socket.create_connection(("127.0.0.1", port))
time.sleep(1 + mb / 300)  # until the child has touched its memory
started = time.time()
os.kill(pid, signal.SIGKILL)
client.recv(1)
print(f"{mb} MB resident: the open connection closed {1000 * (time.time() - started):.1f} ms after kill -9")
os.waitpid(pid, 0)
