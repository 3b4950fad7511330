"""OSC over UDP into a session's live channel (python-osc parses the packets).

Addresses (the session key is the one the page shows in its Performance panel):

    /studio/<session key>/<field path>   one number: set that recipe field
                                         (/studio/KEY/bends/0/params/angle 45, or with dots:
                                         /studio/KEY/bends.0.params.angle 45)
    /studio/<session key>/map/<name>     one number: the source value of the recipe's
                                         mapping <name> (its ranges, curve and smoothing apply)

A message becomes a live-channel message of each page that has the session open, so it
renders (and reaches the session) exactly as a slider's value does; a session with no page
open ignores it. STUDIO_OSC says where to listen: `off`, `on` (127.0.0.1:9000, the default),
a port, or host:port (0.0.0.0:9000 to hear a phone on the local network). On a Hugging Face
Space (SPACE_ID set) OSC stays off whatever it says: strangers share that server.

Bounds: a packet above MAX_PACKET bytes, more than MAX_PER_PACKET messages in one bundle, or
more than MAX_RATE messages a second (over one second) are dropped; each bad message is
dropped with one logged sentence (at most MAX_LOGGED a second, so a flood cannot fill the
log) and never stops the listener.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from engine.base.errors import StudioError
from engine.recipes.mappings import OSC_MAP_PREFIX
from studio import live

log = logging.getLogger(__name__)

ENV = "STUDIO_OSC"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 9000
MAX_PACKET = 4096        # bytes in one UDP packet (a bundle of a few dozen messages)
MAX_PER_PACKET = 64      # messages in one packet (bundles included)
MAX_RATE = 2000          # messages a second, all senders together
MAX_LOGGED = 10          # dropped-message sentences logged a second (a flood fills no log)
PREFIX = "/studio/"
GESTURE_GAP_S = 1.0      # OSC silence that ends one undoable gesture


def where() -> tuple[str, int] | None:
    """(host, port) to listen on as the environment says, or None when OSC is off."""
    if os.environ.get("SPACE_ID"):
        return None
    raw = os.environ.get(ENV, "on").strip().lower()
    if raw in ("off", "0", "false", "no", ""):
        return None
    if raw in ("on", "1", "true", "yes"):
        return DEFAULT_HOST, DEFAULT_PORT
    host, _, port = raw.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number < 65536:   # 0: any free port (the page shows which)
        raise StudioError(f"{ENV} must be off, on, a port or host:port, got {raw!r}.")
    return host or DEFAULT_HOST, number


@dataclass
class Message:
    """One OSC message, understood: a field to set or a mapping's source value."""
    key: str
    value: float
    path: str | None = None     # a recipe field
    name: str | None = None     # a mapping


def parse(address: Any, params: Any) -> Message:
    """The message at `address` with arguments `params`, or one sentence saying why not."""
    from studio.sources import check_path, number
    if not isinstance(address, str) or not address.startswith(PREFIX):
        raise StudioError(f"OSC addresses start with {PREFIX}<session key>/, got "
                          f"{str(address)[:60]!r}.")
    key, _, rest = address[len(PREFIX):].partition("/")
    if not key or not rest:
        raise StudioError(f"{address[:80]!r} names no session key and field; send "
                          f"{PREFIX}<session key>/<field path> <number>.")
    if len(params) != 1:
        raise StudioError(f"{address[:80]!r} needs exactly one number, got {len(params)} "
                          "arguments.")
    value = number(params[0], "an OSC message")
    parts = rest.split("/")
    if parts[0] == "map":
        if len(parts) != 2 or not parts[1]:
            raise StudioError(f"{address[:80]!r}: a mapping's address is "
                              f"{PREFIX}<session key>/map/<name>.")
        return Message(key, value, name=parts[1][:100])
    return Message(key, value, path=check_path(".".join(parts)))


@dataclass
class Listener:
    """The UDP socket and its thread; `stop()` ends both."""
    sock: socket.socket
    thread: threading.Thread | None = None
    done: threading.Event = field(default_factory=threading.Event)
    received: int = 0                     # messages accepted (for tests and benchmarks)
    window: list[float] = field(default_factory=lambda: [0.0, 0.0])   # [start, count]
    said: list[float] = field(default_factory=lambda: [0.0, 0.0])     # [start, count]
    bursts: dict[str, tuple[float, int]] = field(default_factory=dict)  # key -> (last, g)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.sock.close()

    def drop(self, sentence: str) -> None:
        """Log why a message was dropped (at most MAX_LOGGED sentences a second)."""
        if self.count(self.said) <= MAX_LOGGED:
            log.warning("OSC message dropped: %s", sentence)

    @staticmethod
    def count(window: list[float]) -> float:
        """One more event in `window` ([start, count], one second long): the count so far."""
        now = time.monotonic()
        if now - window[0] >= 1.0:
            window[:] = [now, 0.0]
        window[1] += 1
        return window[1]

    def gesture(self, key: str) -> int:
        """The undo gesture of a message to session `key`: one per burst of OSC messages
        (numbered high, away from the page's own gesture numbers)."""
        now = time.monotonic()
        last, g = self.bursts.get(key, (-1e9, 0x40000000))
        if now - last > GESTURE_GAP_S:
            g += 1
        if len(self.bursts) > 1000:
            self.bursts.clear()
        self.bursts[key] = (now, g)
        return g

    def serve(self) -> None:
        self.sock.settimeout(0.25)
        while not self.done.is_set():
            try:
                data, _ = self.sock.recvfrom(MAX_PACKET + 1)
            except TimeoutError:
                continue
            except OSError:
                if self.done.is_set():
                    return
                continue
            try:
                self.packet(data)
            except Exception:  # a bug must not end the listener; the log keeps it
                log.exception("OSC packet failed")

    def packet(self, data: bytes) -> None:
        from pythonosc.osc_packet import OscPacket, ParseError
        if len(data) > MAX_PACKET:
            return self.drop(f"a packet may be at most {MAX_PACKET} bytes.")
        try:
            messages = OscPacket(data).messages
        except (ParseError, ValueError, IndexError, RecursionError, OverflowError):
            return self.drop("the packet is not OSC.")
        if len(messages) > MAX_PER_PACKET:
            return self.drop(f"a packet may hold at most {MAX_PER_PACKET} messages.")
        for timed in messages:
            if self.count(self.window) > MAX_RATE:
                return self.drop(f"more than {MAX_RATE} messages a second.")
            try:
                self.deliver(parse(timed.message.address, list(timed.message.params)))
            except StudioError as exc:
                self.drop(str(exc))

    def deliver(self, msg: Message) -> None:
        sess = live.session_for(msg.key)
        if sess is None:
            raise StudioError("no session has that key (reload the page for its key).")
        if msg.path is not None:
            out = {"kind": "field", "path": msg.path, "value": msg.value}
        else:
            out = {"kind": "source", "events": [{"kind": "osc", "value": msg.value,
                                                 "address": OSC_MAP_PREFIX + msg.name}]}
        out["g"] = self.gesture(msg.key)
        if live.push(sess, out) == 0:
            raise StudioError("that session has no live page open.")
        self.received += 1


_listener: Listener | None = None


def start() -> Listener | None:
    """Listen where STUDIO_OSC says (once per process); None when OSC is off or its port
    is taken (said in the log: the studio runs on without OSC)."""
    global _listener
    if _listener is not None:
        return _listener
    try:
        place = where()
    except StudioError as exc:
        log.warning("OSC is off: %s", exc)
        return None
    if place is None:
        log.info("OSC is off (%s, or a Space).", ENV)
        return None
    try:
        _listener = listen(*place)
    except OSError as exc:
        log.warning("OSC is off: cannot listen on %s:%d (%s); set %s to another port.",
                    *place, exc.strerror or exc, ENV)
        return None
    log.info("OSC listening on udp %s:%d", *_listener.address)
    return _listener


def listen(host: str, port: int) -> Listener:
    """A Listener on host:port (0: a free port), serving in a thread of its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    listener = Listener(sock)
    listener.thread = threading.Thread(target=listener.serve, name="osc", daemon=True)
    listener.thread.start()
    return listener


def describe() -> dict[str, Any]:
    """What the page shows about OSC: where to send, or nothing when it is off."""
    if _listener is None:
        return {}
    host, port = _listener.address
    return {"osc": f"{host}:{port}"}


live.HELLO_PARTS.append(describe)  # the page's hello says where to send
