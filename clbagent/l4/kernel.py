"""The IPVS kernel interface: one table dump, batched operations, timeouts and the sync daemon.

Batching: operations are written to the netlink socket many per ``send`` (the kernel processes
every message of a datagram in turn and carries on after a failing one). Only the last message of
a batch asks for an ACK; the kernel reports any failing message on its own, by sequence number,
so a batch of N operations costs one ``send`` and one ``recv`` instead of N round trips. The dump
reads all services in one request and then each service's destinations (the kernel only dumps
destinations per service, and refuses a second dump on a socket while one is running).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clbagent.l4 import codec
from clbagent.l4.diff import KernelService, Op
from clbagent.l4.plan import ServiceKey

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BATCH = 512  # messages per datagram; bounded so that error replies never overflow the receive buffer
MODULES = ("ip_vs", "ip_vs_wrr", "ip_vs_wlc")

_CMD = {
    "add_service": codec.CMD_NEW_SERVICE,
    "set_service": codec.CMD_SET_SERVICE,
    "del_service": codec.CMD_DEL_SERVICE,
    "add_dest": codec.CMD_NEW_DEST,
    "set_dest": codec.CMD_SET_DEST,
    "del_dest": codec.CMD_DEL_DEST,
}


class IpvsError(OSError):
    """A netlink request the kernel refused, with the object it was about."""

    def __init__(self, err: int, what: str):
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what


@dataclass(frozen=True)
class OpResult:
    op: Op
    error: int = 0  # errno, 0 = done

    def __str__(self) -> str:
        return f"{self.op.describe()}: {os.strerror(self.error) if self.error else 'ok'}"


@dataclass(frozen=True)
class SyncDaemon:
    state: str  # master | backup
    interface: str
    sync_id: int


def load_modules(modules: Iterable[str] = MODULES) -> None:
    """Load ip_vs and the schedulers; IPVS is not a generic-netlink family before ip_vs is loaded."""
    for mod in modules:
        if not os.path.isdir(f"/sys/module/{mod}"):
            subprocess.run(["modprobe", mod], check=True, capture_output=True)


def ipvs_family_id() -> int:
    """The generic-netlink family id of IPVS, resolved through pyroute2."""
    from pyroute2.netlink.generic import GenericNetlinkSocket
    from pyroute2.netlink.generic.ipvs import GENL_NAME, ipvsmsg

    sock = GenericNetlinkSocket()
    try:
        sock.bind(GENL_NAME, ipvsmsg)
        return int(sock.prid)
    finally:
        sock.close()


class IpvsKernel:
    """A netlink channel to IPVS. ``messages`` counts the operations sent, ``dumps`` the table
    dumps (what an incremental pass avoids)."""

    def __init__(self, load: bool = True):
        if load:
            load_modules()
        self.family = ipvs_family_id()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        for force, plain, size in (
            (SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20),
            (SO_RCVBUFFORCE, socket.SO_RCVBUF, 8 << 20),
        ):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, size)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, plain, size)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.seq = 0
        self.messages = 0
        self.dumps = 0
        self._buf = bytearray(1 << 20)
        self._view = memoryview(self._buf)
        self._decode_dest = codec.DestDecoder()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> IpvsKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    def _recv(self) -> bytes:
        # recv_into a buffer kept across calls: recv(1 MiB) allocates and trims 1 MiB per call.
        n = self.sock.recv_into(self._buf)
        return bytes(self._view[:n])

    def _request(self, cmd: int, attrs: bytes, what: str, dump: bool = False) -> list[memoryview]:
        """One request; returns the payloads of the replies (a dump ends at DONE, a get at the ACK)."""
        seq = self._next_seq()
        flags = codec.NLM_F_REQUEST | (codec.NLM_F_DUMP if dump else codec.NLM_F_ACK)
        self.sock.send(codec.message(self.family, cmd, seq, attrs, flags))
        replies: list[memoryview] = []
        while True:
            for kind, _flags, rseq, payload in codec.messages(self._recv()):
                if rseq != seq:
                    continue
                if kind == codec.NLMSG_DONE:
                    return replies
                if kind == codec.NLMSG_ERROR:
                    err = codec.ack_error(payload)
                    if err:
                        raise IpvsError(err, what)
                    return replies
                replies.append(payload)

    # -- reading ---------------------------------------------------------------------------------

    def replies(self, cmd: int, attrs: bytes, what: str) -> list[memoryview]:
        """The reply payloads of one dump request (for readers with their own decoding)."""
        return self._request(cmd, attrs, what, dump=True)

    def dump(self, only: frozenset[str] | None = None) -> dict[ServiceKey, KernelService]:
        """The kernel's table: every TCP/UDP service by address (or only those on ``only`` VIPs),
        with destinations and connection counters. fwmark and other services are not returned."""
        table: dict[ServiceKey, KernelService] = {}
        for payload in self._request(codec.CMD_GET_SERVICE, b"", "dump services", dump=True):
            key, sched, persistence = codec.decode_service(payload)
            if key is None or (only is not None and key.address not in only):
                continue
            table[key] = KernelService(key, sched, persistence, {})
        self._read_dests(table)
        self.dumps += 1
        return table

    def refresh(self, services: Iterable[KernelService]) -> dict[ServiceKey, KernelService]:
        """These services with their destinations and counters read again (one request per
        service; scheduler and persistence as given). The kernel answers a service it no longer
        has with no destinations."""
        table = {s.key: KernelService(s.key, s.scheduler, s.persistence, {}) for s in services}
        self._read_dests(table)
        return table

    def _read_dests(self, table: dict[ServiceKey, KernelService]) -> None:
        flags = codec.NLM_F_REQUEST | codec.NLM_F_DUMP
        for key, svc in table.items():
            seq = self._next_seq()
            attrs = codec.nla(codec.A_SERVICE, codec.service_key_attrs(key))
            self.sock.send(codec.message(self.family, codec.CMD_GET_DEST, seq, attrs, flags))
            status = None
            while status is None:  # decoded straight from the receive buffer: no copies
                n = self.sock.recv_into(self._buf)
                status = self._decode_dest.feed(self._view[:n], seq, key.family, svc.dests)
            if status and status not in (errno.ESRCH, errno.ENOENT):  # ENOENT: deleted between the dumps
                raise IpvsError(status, f"dump {key}")

    # -- writing ---------------------------------------------------------------------------------

    def _encode(self, op: Op, seq: int, ack: bool) -> bytes:
        full = op.kind != "del_service" and op.kind != "del_dest"
        if op.dest is None:
            attrs = codec.service_attrs(op.service, full)
        else:
            attrs = codec.nla(codec.A_SERVICE, codec.service_key_attrs(op.service.key))
            attrs += codec.dest_attrs(op.service.key.family, op.dest, full)
        flags = codec.NLM_F_REQUEST | (codec.NLM_F_ACK if ack else 0)
        return codec.message(self.family, _CMD[op.kind], seq, attrs, flags)

    def execute(self, ops: Sequence[Op], batch: int = BATCH) -> list[OpResult]:
        """Send the operations in batches; one result per operation, in order. Never raises for a
        refused operation: the caller decides what a failure means (see reconcile)."""
        results: list[OpResult] = []
        for start in range(0, len(ops), batch):
            chunk = ops[start : start + batch]
            first = self.seq + 1
            data = b"".join(self._encode(op, self._next_seq(), i == len(chunk) - 1) for i, op in enumerate(chunk))
            last = self.seq
            self.sock.send(data)
            self.messages += len(chunk)
            errors: dict[int, int] = {}
            done = False
            while not done:
                for kind, _flags, rseq, payload in codec.messages(self._recv()):
                    if kind != codec.NLMSG_ERROR or not first <= rseq <= last:
                        continue
                    err = codec.ack_error(payload)
                    if err:
                        errors[rseq] = err
                    done = done or rseq == last
            results += [OpResult(op, errors.get(first + i, 0)) for i, op in enumerate(chunk)]
        return results

    # -- configuration ---------------------------------------------------------------------------

    def timeouts(self) -> dict[str, int]:
        """IPVS connection timeouts in seconds: tcp (established), tcp_fin, udp."""
        (payload,) = self._request(codec.CMD_GET_CONFIG, b"", "get timeouts")
        attrs = codec.parse_attrs(payload, 4)
        names = {"tcp": codec.A_TIMEOUT_TCP, "tcp_fin": codec.A_TIMEOUT_TCP_FIN, "udp": codec.A_TIMEOUT_UDP}
        return {name: codec._u32(attrs.get(kind)) for name, kind in names.items()}

    def set_timeouts(self, tcp: int | None = None, tcp_fin: int | None = None, udp: int | None = None) -> None:
        """IPVS_CMD_SET_CONFIG with only the given timeouts (the others stay as they are)."""
        attrs = b""
        for kind, value in ((codec.A_TIMEOUT_TCP, tcp), (codec.A_TIMEOUT_TCP_FIN, tcp_fin), (codec.A_TIMEOUT_UDP, udp)):
            if value is not None:
                attrs += codec.u32(kind, value)
        self._request(codec.CMD_SET_CONFIG, attrs, f"set timeouts tcp={tcp} tcp_fin={tcp_fin} udp={udp}")

    def sync_daemons(self) -> list[SyncDaemon]:
        found: list[SyncDaemon] = []
        for payload in self._request(codec.CMD_GET_DAEMON, b"", "dump sync daemons", dump=True):
            attrs = codec.parse_attrs(codec.parse_attrs(payload, 4)[codec.A_DAEMON])
            state = {v: k for k, v in codec.DAEMON_STATE.items()}.get(codec._u32(attrs.get(codec.DM_STATE)), "?")
            ifname = bytes(attrs[codec.DM_MCAST_IFN]).split(b"\0", 1)[0].decode()
            found.append(SyncDaemon(state, ifname, codec._u32(attrs.get(codec.DM_SYNC_ID))))
        return found

    def start_sync_daemon(self, state: str, interface: str, sync_id: int = 0) -> None:
        """Start the connection sync daemon (master sends, backup receives) for session sync."""
        attrs = (
            codec.u32(codec.DM_STATE, codec.DAEMON_STATE[state])
            + codec.nla(codec.DM_MCAST_IFN, interface.encode() + b"\0")
            + codec.u32(codec.DM_SYNC_ID, sync_id)
        )
        self._request(
            codec.CMD_NEW_DAEMON, codec.nla(codec.A_DAEMON, attrs), f"start sync daemon {state} on {interface}"
        )

    def stop_sync_daemon(self, state: str) -> None:
        attrs = codec.u32(codec.DM_STATE, codec.DAEMON_STATE[state])
        self._request(codec.CMD_DEL_DAEMON, codec.nla(codec.A_DAEMON, attrs), f"stop sync daemon {state}")
