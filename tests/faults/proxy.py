"""A small asyncio TCP proxy for fault tests: between the sidecar and a server, it passes
bytes, holds them (a blackhole: the connection stays open, nothing arrives - a half-open
path), resets every connection (RST: SO_LINGER 0), trickles one byte at a time, or adds
latency. ``hold_up`` holds only what the client sends (the sidecar's feedback never reaches
the source while the source's stream still flows); ``hold_down`` only what the server sends
(a statement arrives and runs, its reply never comes back). ``orphan`` resets every client
connection but keeps its server side open, as a middlebox or a dead path can: the server's
session lives on (holding its locks, waiting on a client that is gone) until someone ends it.
When one direction of a connection ends, both ends are closed (unless orphaned).

Runs in a process of its own (``ProxyProcess``; libpq's blocking connect can hold the GIL,
so a proxy thread in the sidecar's process could wait on the very connect it serves); the
test drives it over stdin/stdout. Modes switch at once, for open connections and new ones.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import threading

PASS, BLACKHOLE, TRICKLE, LATENCY = "pass", "blackhole", "trickle", "latency"
HOLD_UP, HOLD_DOWN = "hold_up", "hold_down"


class Proxy:
    def __init__(self, host: str, port: int, *, trickle_delay: float = 0.002,
                 latency: float = 0.05) -> None:
        self.upstream = (host, port)
        self.mode = PASS
        self.trickle_delay, self.latency = trickle_delay, latency
        self.loop = asyncio.new_event_loop()
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._changed: asyncio.Event | None = None
        self._orphans: list[asyncio.StreamWriter] = []
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    # -- control, from the test's thread -------------------------------------------------

    def set(self, mode: str) -> None:
        self.mode = mode
        self.loop.call_soon_threadsafe(self._changed.set)

    def reset(self) -> None:
        """RST every open connection (new ones are accepted as the mode says)."""
        asyncio.run_coroutine_threadsafe(self._reset(), self.loop).result(10)

    def orphan(self) -> None:
        """RST the client side of every open connection; keep the server side open."""
        asyncio.run_coroutine_threadsafe(self._reset(orphan=True), self.loop).result(10)

    def dsn(self, dsn: str) -> str:
        return f"{dsn} host=127.0.0.1 port={self.port}"

    def close(self) -> None:
        self.reset()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # -- the loop ------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._changed = asyncio.Event()
        server = self.loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _reset(self, orphan: bool = False) -> None:
        for a, b in list(self._conns):
            if orphan:
                self._orphans.append(b)  # never closed: the server's session lives on
            for w in (a,) if orphan else (a, b):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
        self._conns.clear()

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(*self.upstream)
        except OSError:
            cw.transport.abort()
            return
        pair = (cw, sw)
        self._conns.add(pair)
        pipes = [asyncio.ensure_future(self._pipe(cr, sw, up=True)),
                 asyncio.ensure_future(self._pipe(sr, cw, up=False))]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for t in pipes:  # one direction ended (EOF, RST): so does the other
            t.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        self._conns.discard(pair)
        for w in pair:
            if w not in self._orphans:
                w.transport.abort()

    async def _wait_flowing(self, up: bool) -> None:
        while self.mode == BLACKHOLE or self.mode == (HOLD_UP if up else HOLD_DOWN):
            self._changed.clear()
            await self._changed.wait()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
        while True:
            await self._wait_flowing(up)
            data = await r.read(65536)
            if not data:
                return
            await self._wait_flowing(up)  # read just before a blackhole: held too
            if self.mode == TRICKLE:
                for i in range(len(data)):
                    w.write(data[i:i + 1])
                    await w.drain()
                    await asyncio.sleep(self.trickle_delay)
                continue
            if self.mode == LATENCY:
                await asyncio.sleep(self.latency)
            w.write(data)
            await w.drain()


class ProxyProcess:
    """``Proxy`` in a child process: ``set(mode)``, ``reset()``, ``dsn()``, ``close()``."""

    def __init__(self, host: str, port: int, *, trickle_delay: float = 0.002) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.proxy", host, str(port), str(trickle_delay)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.port = int(self.proc.stdout.readline())

    def _say(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def set(self, mode: str) -> None:
        self._say(mode)

    def reset(self) -> None:
        self._say("reset")

    def orphan(self) -> None:
        self._say("orphan")

    def dsn(self, dsn: str) -> str:
        return f"{dsn} host=127.0.0.1 port={self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _serve(host: str, port: int, trickle_delay: float) -> None:
    px = Proxy(host, port, trickle_delay=trickle_delay)
    print(px.port, flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "reset":
            px.reset()
        elif cmd == "orphan":
            px.orphan()
        elif cmd:
            px.set(cmd)
        print("ok", flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
