local leastconn = require("clb.leastconn")

local function peers(weights, conns)
  local out = {}
  for i, w in ipairs(weights) do
    out[i] = { index = i, weight = w, cw = 0, usable = w > 0, conns = conns[i] }
  end
  return out
end

local function count(p)
  return p.conns
end

describe("least connections", function()
  it("picks the peer with the fewest connections", function()
    assert.equal(2, leastconn.pick(peers({ 1, 1, 1 }, { 4, 1, 3 }), nil, count).index)
  end)

  it("weighs connections by weight (nginx: conns * best.weight < best.conns * weight)", function()
    -- 4 connections at weight 4 is lighter than 2 at weight 1
    assert.equal(1, leastconn.pick(peers({ 4, 1 }, { 4, 2 }), nil, count).index)
  end)

  it("breaks ties by weighted round robin among the tied peers", function()
    local ps, hits = peers({ 1, 1, 1 }, { 0, 0, 5 }), { 0, 0, 0 }
    for _ = 1, 10 do
      local p = leastconn.pick(ps, nil, count)
      hits[p.index] = hits[p.index] + 1
    end
    assert.same({ 5, 5, 0 }, hits)
  end)

  it("skips tried, down and weight-0 peers", function()
    local ps = peers({ 1, 0, 1, 1 }, { 0, 0, 0, 9 })
    ps[3].usable = false
    assert.equal(4, leastconn.pick(ps, { [1] = true }, count).index)
    assert.is_nil(leastconn.pick(ps, { [1] = true, [4] = true }, count))
  end)
end)
