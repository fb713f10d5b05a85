local spec = require("clb.spec")

local function member(over)
  local m = { endpoint = "10.0.0.1:80", weight = 10 }
  for k, v in pairs(over or {}) do
    m[k] = v
  end
  return m
end

local function refused(doc)
  local out, err = spec.document(doc)
  assert.is_nil(out)
  return err.path, err.message
end

describe("endpoints", function()
  it("accepts IPv4 and bracketed IPv6 with a port", function()
    assert.same({ "10.0.0.1", 80 }, { spec.endpoint("10.0.0.1:80") })
    assert.same({ "2001:db8::1", 8080 }, { spec.endpoint("[2001:db8::1]:8080") })
    assert.same({ "::ffff:10.0.0.1", 1 }, { spec.endpoint("[::ffff:10.0.0.1]:1") })
    assert.same({ "1:2:3:4:5:6:7:8", 65535 }, { spec.endpoint("[1:2:3:4:5:6:7:8]:65535") })
  end)

  it("refuses anything else", function()
    for _, bad in ipairs({
      "10.0.0.1", "10.0.0.256:80", "10.0.0.01:80", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:080",
      "host:80", "2001:db8::1:80", "[2001:db8:::1]:80", "[1::2::3]:80", "[1:2:3:4:5:6:7:8:9]:80",
      "[12345::]:80", "10.0.0.1:80 ", "10.0.0.1:80;", "[::1]:80\n", "",
    }) do
      assert.is_nil(spec.endpoint(bad), bad)
    end
    assert.is_nil(spec.endpoint(42))
  end)
end)

describe("documents", function()
  it("normalizes an upstream (defaults: wrr, not down)", function()
    local out = spec.document({ upstreams = { u_1 = { members = { member() } } } })
    assert.same({ method = "wrr", members = { { endpoint = "10.0.0.1:80", weight = 10, down = false } } }, out.u_1)
  end)

  it("accepts sticky with a server id per member", function()
    local out = spec.document({ upstreams = { u = {
      method = "wrr",
      sticky = { cookie = "clb_abc", max_age = 600 },
      members = { member({ sid = "0123456789abcdef" }) },
    } } })
    assert.same({ cookie = "clb_abc", max_age = 600 }, out.u.sticky)
  end)

  it("accepts an empty member list", function()
    assert.same({}, spec.document({ upstreams = { u = { members = {} } } }).u.members)
  end)

  it("names the offending field", function()
    local cases = {
      { { upstreams = { u = { members = { member({ weight = 101 }) } } } }, "upstreams.u.members[0].weight" },
      { { upstreams = { u = { members = { member({ weight = 1.5 }) } } } }, "upstreams.u.members[0].weight" },
      { { upstreams = { u = { members = { member({ weight = "5" }) } } } }, "upstreams.u.members[0].weight" },
      { { upstreams = { u = { members = { member(), member({ endpoint = "x" }) } } } }, "upstreams.u.members[1].endpoint" },
      { { upstreams = { u = { members = { member(), member() } } } }, "upstreams.u.members[1].endpoint" },
      { { upstreams = { u = { members = { member({ down = "yes" }) } } } }, "upstreams.u.members[0].down" },
      { { upstreams = { u = { members = { member({ extra = 1 }) } } } }, "upstreams.u.members[0].extra" },
      { { upstreams = { u = { members = { "10.0.0.1:80" } } } }, "upstreams.u.members[0]" },
      { { upstreams = { u = { members = { a = 1 } } } }, "upstreams.u.members" },
      { { upstreams = { u = { method = "random", members = {} } } }, "upstreams.u.method" },
      { { upstreams = { u = { members = {}, weight = 1 } } }, "upstreams.u.weight" },
      { { upstreams = { u = { sticky = { cookie = "a;b", max_age = 1 }, members = {} } } }, "upstreams.u.sticky.cookie" },
      { { upstreams = { u = { sticky = { cookie = "a", max_age = 0 }, members = {} } } }, "upstreams.u.sticky.max_age" },
      { { upstreams = { u = { sticky = { cookie = "a", max_age = 9 }, members = { member() } } } }, "upstreams.u.members[0].sid" },
      { { upstreams = { u = { members = { member({ sid = "a b" }) } } } }, "upstreams.u.members[0].sid" },
      { { upstreams = { ["bad name"] = { members = {} } } }, "upstreams.bad name" },
      { { upstreams = { u = "x" } }, "upstreams.u" },
      { { upstreams = { 1, 2 } }, "upstreams" },
      { { upstreams = { u = { members = {} } }, more = 1 }, "" },
      { "text", "" },
      { false, "" },
    }
    for _, case in ipairs(cases) do
      local path, message = refused(case[1])
      assert.equal(case[2], path)
      assert.is_string(message)
    end
  end)

  it("refuses two members with one server id", function()
    local path = refused({ upstreams = { u = { members = {
      member({ sid = "s1" }), member({ endpoint = "10.0.0.2:80", sid = "s1" }),
    } } } })
    assert.equal("upstreams.u.members[1].sid", path)
  end)

  it("bounds the member count", function()
    local members = {}
    for i = 1, spec.MAX_MEMBERS + 1 do
      members[i] = member({ endpoint = "10.0." .. math.floor(i / 256) .. "." .. (i % 256) .. ":80" })
    end
    assert.equal("upstreams.u.members", refused({ upstreams = { u = { members = members } } }))
  end)
end)
