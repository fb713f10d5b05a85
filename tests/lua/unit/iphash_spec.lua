local iphash = require("clb.iphash")
local peers = require("clb.peers")

local function upstream(weights, down)
  local members = {}
  for i, w in ipairs(weights) do
    members[i] = { endpoint = "10.0.0." .. i .. ":80", weight = w, down = down and down[i] or false }
  end
  return peers.build("u", { method = "ip_hash", members = members }, 1)
end

local function v4(a, b, c, d)
  return string.char(a, b, c, d)
end

-- nginx's hash, written out independently: (89 * 113 + byte) % 6271 over the first 3 octets
local function nginx_slot(addr, total)
  local hash = 89
  for i = 1, 3 do
    hash = (hash * 113 + addr:byte(i)) % 6271
  end
  return hash % total
end

describe("ip_hash", function()
  it("maps a client like nginx does", function()
    local up = upstream({ 1, 1, 1, 1 })
    for d = 0, 50 do
      local addr = v4(192, 168, d, 7)
      assert.equal(nginx_slot(addr, 4) + 1, iphash.pick(up, addr).index)
    end
  end)

  it("keeps a /24 together and ignores the last octet", function()
    local up = upstream({ 1, 1, 1 })
    local first = iphash.pick(up, v4(10, 1, 2, 3)).index
    for last = 0, 255, 17 do
      assert.equal(first, iphash.pick(up, v4(10, 1, 2, last)).index)
    end
  end)

  it("uses all 16 bytes of an IPv6 client", function()
    local up = upstream({ 1, 1, 1, 1, 1, 1, 1 })
    local base = ("\32\1\13\184"):rep(4)
    local seen = {}
    for last = 0, 40 do
      seen[iphash.pick(up, base:sub(1, 15) .. string.char(last)).index] = true
    end
    local n = 0
    for _ in pairs(seen) do
      n = n + 1
    end
    assert.is_true(n > 1)
  end)

  it("walks members with their weights", function()
    local up = upstream({ 3, 1 })
    local hits = { 0, 0 }
    for c = 0, 255 do
      for b = 0, 15 do
        local i = iphash.pick(up, v4(10, b, c, 1)).index
        hits[i] = hits[i] + 1
      end
    end
    local share = hits[1] / (hits[1] + hits[2])
    assert.is_true(share > 0.65 and share < 0.85, "share " .. share)
  end)

  it("moves only the clients of a down member", function()
    local all, down = upstream({ 1, 1, 1 }), upstream({ 1, 1, 1 }, { false, true, false })
    for c = 0, 200 do
      local addr = v4(172, 16, c, 1)
      local before, after = iphash.pick(all, addr).index, iphash.pick(down, addr).index
      assert.are_not.equal(2, after)
      if before ~= 2 then
        assert.equal(before, after)
      end
    end
  end)

  it("continues the hash on a retry and never returns a tried member", function()
    local up = upstream({ 1, 1, 1 })
    local addr = v4(10, 9, 8, 7)
    local first, hash, tries = iphash.pick(up, addr)
    local second = iphash.pick(up, addr, { [first.index] = true }, hash, tries)
    assert.are_not.equal(first.index, second.index)
  end)

  it("falls back to round robin after 20 rehashes", function()
    local up = upstream({ 1, 1 })
    local peer, _, tries = iphash.pick(up, v4(1, 2, 3, 4), { [1] = true, [2] = true })
    assert.is_nil(peer)
    assert.is_true(tries > iphash.MAX_TRIES)
  end)
end)
