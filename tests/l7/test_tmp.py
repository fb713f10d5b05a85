import time, pytest
from tests.l7.conftest import *
from tests.l7.test_routing import VIP
def test_x(serve, backends):
    b = backends("x")
    s = serve([load_balancer("lb", VIP, [listener("l", "HTTP", 18080, [rule("r", "a.test", "/", [b.target()], DefaultServer=True)])])])
    http_get(VIP, 18080, "a.test")
    t=time.time(); s.nginx.stop(); print("nginx stop", time.time()-t)
    t=time.time(); b.kill(); print("kill", time.time()-t)
