"""L4 data plane: TCP/UDP listeners as an IPVS table, reconciled into the kernel over netlink.

- :mod:`clbagent.l4.plan` -- pure: desired state -> :class:`IpvsPlan` (``render`` prints it).
- :mod:`clbagent.l4.diff` -- pure: plan + one kernel dump -> minimal operations (with inverses).
- :mod:`clbagent.l4.codec` / :mod:`clbagent.l4.kernel` -- IPVS generic netlink, batched.
- :mod:`clbagent.l4.reconcile` -- one pass (full: with a dump; incremental: against the kept view),
  apply, undo on failure, drain bookkeeping.
- :mod:`clbagent.l4.stats` -- the kernel's traffic counters of services and destinations.
- :mod:`clbagent.l4.host` -- dummy interface with the VIPs, sysctls, timeouts, sync daemon.
- :mod:`clbagent.l4.apply` -- all of the above in the order the agent runs them.
"""

from clbagent.l4.plan import Destination, IpvsPlan, ServiceKey, VirtualService, plan_ipvs, target_key

__all__ = ["Destination", "IpvsPlan", "ServiceKey", "VirtualService", "plan_ipvs", "target_key"]
