"""clbagent: the data-plane agent of a cloud load balancer."""

__version__ = "0.1.0"
