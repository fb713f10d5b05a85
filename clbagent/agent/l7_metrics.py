"""L7 metrics and the instance totals, added to the agent's exposition at every scrape.

nginx counts in its log phase (``clbagent/lua/clb/metrics.lua``) and writes the Prometheus text of
its counters itself (``clb.metrics_text``): at 1,000 load balancers a scrape has ~100,000 series,
which LuaJIT writes several times faster than Python. The agent adds what only it knows: whether
nginx counts at all (static mode), whether the read worked, and the L4 part of the instance totals
from the kernel's IPVS counters. See docs/metrics.md for the catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from clbagent.nginx.metrics_channel import MetricsUnavailableError

L4Totals = Callable[[], Mapping[str, Mapping[str, float]]]
INSTANCE_BYTES = (
    "# HELP clb_instance_bytes_total Bytes of the load balancer from clients (in) and to them (out), "
    "by layer (l7: requests and responses)\n# TYPE clb_instance_bytes_total counter\n"
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _gauge(name: str, doc: str, value: int) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} gauge\n{name} {value}\n"


def l4_text(l4: Mapping[str, Mapping[str, float]]) -> tuple[str, str]:
    """The L4 samples of ``clb_instance_bytes_total`` (no header: they follow nginx's), and the
    ``clb_instance_packets_total`` family (L4 only: nginx sees requests, not packets)."""
    byte_lines, packet_lines = [], []
    for lb, c in sorted(l4.items()):
        labels = f'load_balancer="{_escape(lb)}"'
        for d in ("in", "out"):
            series = f'clb_instance_bytes_total{{{labels},layer="l4",direction="{d}"}}'
            byte_lines.append(f"{series} {c.get(f'bytes_{d}', 0)}\n")
            packet_lines.append(f'clb_instance_packets_total{{{labels},direction="{d}"}} {c.get(f"packets_{d}", 0)}\n')
    packets = ""
    if packet_lines:
        packets = (
            "# HELP clb_instance_packets_total IP packets of the load balancer's L4 listeners, from clients (in) "
            "and to them (out)\n# TYPE clb_instance_packets_total counter\n" + "".join(packet_lines)
        )
    return "".join(byte_lines), packets


class L7Metrics:
    """``read`` gives nginx's text (None: nginx counts nothing, static mode); ``l4_totals`` the
    kernel's per load balancer ``bytes_in``/``bytes_out``/``packets_in``/``packets_out``."""

    def __init__(self, read: Callable[[], bytes] | None, l4_totals: L4Totals | None = None):
        self.read = read
        self.l4_totals = l4_totals

    def text(self) -> bytes:
        """The L7 and instance families as one string (see ``parts``)."""
        return b"".join(self.parts())

    def parts(self) -> list[bytes]:
        """The L7 and instance families, in pieces to be sent one after the other: nginx's bytes
        are passed on as they came (~10 MB at 1,000 load balancers: decoding, parsing or even
        copying them into one string would cost a good part of the scrape)."""
        out = [
            _gauge(
                "clb_http_metrics_available",
                "1 when nginx counts the L7 metrics (Lua module loaded); 0 in static mode: no clb_http_* families",
                int(self.read is not None),
            )
        ]
        nginx = None
        if self.read is not None:
            try:
                nginx = self.read()
            except MetricsUnavailableError:
                nginx = None
            up = int(nginx is not None)
            out.append(_gauge("clb_http_stats_up", "1 when nginx's L7 counters could be read at this scrape", up))
        try:
            l4 = self.l4_totals() if self.l4_totals else {}
        except OSError:  # the kernel's counters are read on their own (clb_l4_stats_up)
            l4 = {}
        l4_bytes, packets = l4_text(l4)
        # nginx's text ends with the instance-bytes header and its L7 samples: the L4 ones follow
        head = "".join(out).encode()
        tail = (l4_bytes + packets).encode()
        if nginx is None:
            return [head + (INSTANCE_BYTES.encode() if l4_bytes else b"") + tail]
        return [head, nginx, tail]
