local wrr = require("clb.wrr")

local function peers(weights)
  local out = {}
  for i, w in ipairs(weights) do
    out[i] = { index = i, weight = w, cw = 0, usable = w > 0 }
  end
  return out
end

local function sequence(ps, n, tried)
  local out = {}
  for i = 1, n do
    out[i] = wrr.pick(ps, tried).index
  end
  return table.concat(out, " ")
end

describe("smooth weighted round robin", function()
  it("interleaves like nginx (5:1:1 gives a a b a c a a)", function()
    assert.equal("1 1 2 1 3 1 1", sequence(peers({ 5, 1, 1 }), 7))
  end)

  it("follows the weights exactly over a cycle", function()
    local ps, hits = peers({ 3, 1 }), { 0, 0 }
    for _ = 1, 400 do
      local p = wrr.pick(ps)
      hits[p.index] = hits[p.index] + 1
    end
    assert.same({ 300, 100 }, hits)
  end)

  it("gives nothing to weight 0 or unusable peers", function()
    local ps = peers({ 1, 0, 1 })
    ps[3].usable = false
    assert.equal("1 1 1", sequence(ps, 3))
  end)

  it("skips peers an earlier try used", function()
    local ps = peers({ 1, 1, 1 })
    assert.equal("2 3 2", sequence(ps, 3, { [1] = true }))
  end)

  it("returns nil when nothing is left", function()
    assert.is_nil(wrr.pick(peers({ 0, 0 })))
    assert.is_nil(wrr.pick(peers({ 1 }), { [1] = true }))
  end)
end)
