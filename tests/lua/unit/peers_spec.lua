local peers = require("clb.peers")

local function build(members, sticky)
  return peers.build("u", { method = "wrr", sticky = sticky, members = members }, 7)
end

local function usable(up)
  local out = {}
  for i, p in ipairs(up.peers) do
    out[i] = p.usable
  end
  return out
end

describe("peers", function()
  it("splits endpoints into host (IPv6 in brackets, as set_current_peer wants) and port", function()
    local up = build({ { endpoint = "[::1]:81", weight = 1, down = false } })
    assert.equal("[::1]", up.peers[1].host)
    assert.equal(81, up.peers[1].port)
    assert.equal(7, up.version)
  end)

  it("keys each member's connection counter by 8 bytes of its upstream and endpoint", function()
    local key = peers.conns_key("u_0123456789abcdef0123456789abcdef_loc_root", "10.0.0.1:80")
    assert.equal(8, #key)
    assert.equal(key, peers.conns_key("u_0123456789abcdef0123456789abcdef_loc_root", "10.0.0.1:80"))
    assert.not_equal(key, peers.conns_key("u_0123456789abcdef0123456789abcdef_loc_root", "10.0.0.1:81"))
    assert.not_equal(key, peers.conns_key("u_0123456789abcdef0123456789abcdef_loc_rooT", "10.0.0.1:80"))
    assert.equal(peers.conns_key("u", "10.0.0.1:80"), build({ { endpoint = "10.0.0.1:80", weight = 1 } }).peers[1].ckey)
  end)

  it("gives no traffic to weight 0 and to down members", function()
    local up = build({
      { endpoint = "10.0.0.1:80", weight = 1, down = false },
      { endpoint = "10.0.0.2:80", weight = 0, down = false },
      { endpoint = "10.0.0.3:80", weight = 1, down = true },
    })
    assert.same({ true, false, false }, usable(up))
    assert.equal(1, up.usable)
  end)

  it("revives every weighted member when all of them are down (all-dead-all-alive)", function()
    local up = build({
      { endpoint = "10.0.0.1:80", weight = 1, down = true },
      { endpoint = "10.0.0.2:80", weight = 0, down = false },
      { endpoint = "10.0.0.3:80", weight = 5, down = true },
    })
    assert.same({ true, false, true }, usable(up))
  end)

  it("has nothing usable when every weight is 0", function()
    local up = build({ { endpoint = "10.0.0.1:80", weight = 0, down = false } })
    assert.equal(0, up.usable)
  end)

  it("prepares the cookie of each member with sticky", function()
    local up = build({ { endpoint = "10.0.0.1:80", weight = 1, down = false, sid = "abc" } },
      { cookie = "clb_x", max_age = 60 })
    assert.equal("clb_x=abc; Path=/; Max-Age=60; HttpOnly", up.peers[1].cookie)
    assert.equal(up.peers[1], up.by_sid.abc)
    assert.equal("cookie_clb_x", up.cookie_var)
  end)
end)

describe("the interpreter", function()
  it("is LuaJIT, as inside nginx", function()
    assert.is_table(jit)
  end)
end)
