local store = require("clb.store")

--- A stand-in for ngx.shared.DICT with its semantics for the calls the store makes.
local function dict(capacity)
  local d = { data = {}, n = 0 }
  function d:get(k)
    return self.data[k]
  end
  function d:safe_set(k, v)
    if self.data[k] == nil then
      if self.n >= (capacity or math.huge) then
        return false, "no memory"
      end
      self.n = self.n + 1
    end
    self.data[k] = v
    return true
  end
  d.set = d.safe_set
  function d:incr(k, by, init)
    local v = self.data[k]
    if v == nil then
      if init == nil then
        return nil, "not found"
      end
      v = init
      self.n = self.n + 1
    end
    self.data[k] = v + by
    return v + by
  end
  function d:delete(k)
    if self.data[k] ~= nil then
      self.n = self.n - 1
    end
    self.data[k] = nil
  end
  function d:get_keys()
    local keys = {}
    for k in pairs(self.data) do
      keys[#keys + 1] = k
    end
    return keys
  end
  return d
end

local function upstream(endpoint)
  return { method = "wrr", members = { { endpoint = endpoint, weight = 1, down = false } } }
end

describe("store", function()
  it("hands out a new version on every change, never reused", function()
    local s = store.new(dict())
    local v1 = s:write("a", upstream("10.0.0.1:80"), "channel")
    local v2 = s:write("a", upstream("10.0.0.2:80"), "channel")
    assert.is_true(v2 > v1)
    assert.equal(v2, s:write("a", upstream("10.0.0.2:80"), "channel"), "unchanged: same version")
    assert.is_true(s:remove("a"))
    assert.is_false(s:remove("a"))
    assert.is_nil(s:version("a"))
    assert.is_true(s:write("a", upstream("10.0.0.2:80"), "channel") > v2)
  end)

  it("moves the change counter after every change of a version, and only then", function()
    local d = dict()
    local s = store.new(d)
    s:write("a", upstream("10.0.0.1:80"), "channel")
    local gen = d:get(store.GEN)
    assert.is_number(gen)
    s:write("a", upstream("10.0.0.1:80"), "channel")
    assert.equal(gen, d:get(store.GEN), "unchanged content: nothing to look at again")
    s:write("a", upstream("10.0.0.2:80"), "channel")
    assert.is_true(d:get(store.GEN) > gen)
    gen = d:get(store.GEN)
    s:remove("a")
    assert.is_true(d:get(store.GEN) > gen)
    gen = d:get(store.GEN)
    s:remove("a")
    assert.equal(gen, d:get(store.GEN), "nothing removed")
  end)

  it("mirrors the change counter in the gen word, which every mapping of the file shares", function()
    local path = os.tmpname()
    local ok, err = pcall(function()
      local first = store.map_word(path)
      assert.is_not_nil(first)
      local d = dict()
      local s = store.new(d)
      s:write("a", upstream("10.0.0.1:80"), "channel")
      assert.equal(d:get(store.GEN), first[0])
      local second = store.map_word(path) -- a reload's master maps the same bytes again
      assert.equal(d:get(store.GEN), second[0], "the value is in the file's page, not in the process")
      s:remove("a")
      assert.equal(d:get(store.GEN), first[0], "one mapping's write is seen through the other")
      d.data[store.GEN] = nil
      s:publish()
      assert.equal(0, second[0], "an empty dict's counter: a fresh start")
    end)
    os.remove(path)
    store.word = nil
    assert(ok, err)
  end)

  it("leaves the gen word off where the file cannot be made", function()
    assert.is_nil(store.map_word("/nonexistent-dir/upstreams.gen"))
    assert.is_nil(store.word)
    store.new(dict()):write("a", upstream("10.0.0.1:80"), "channel")
  end)

  it("reads back what it stored", function()
    local s = store.new(dict())
    s:write("a", upstream("10.0.0.1:80"), "file")
    local up, version = s:read("a")
    assert.same(upstream("10.0.0.1:80"), up)
    assert.equal(s:version("a"), version)
    assert.same({ "a" }, s:names())
  end)

  it("refuses a write when the dict is full instead of evicting", function()
    local s = store.new(dict(4))
    assert.is_number(s:write("a", upstream("10.0.0.1:80"), "channel"))
    local ok, err = s:write("b", upstream("10.0.0.2:80"), "channel")
    assert.is_nil(ok)
    assert.equal("no memory", err)
    assert.is_not_nil(s:read("a"))
  end)

  it("seeds from the file: keeps what the channel sent, replaces file entries, drops the gone", function()
    local d = dict()
    local s = store.new(d)
    s:seed({ a = upstream("10.0.0.1:80"), b = upstream("10.0.0.2:80"), c = upstream("10.0.0.3:80") }, "i1")
    s:write("a", upstream("10.0.0.9:80"), "channel")
    local b_version = s:version("b")
    s:seed({ a = upstream("10.0.0.1:80"), b = upstream("10.0.0.5:80"), d = upstream("10.0.0.4:80") }, "i2")
    assert.equal("10.0.0.9:80", s:read("a").members[1].endpoint)
    assert.equal("10.0.0.5:80", s:read("b").members[1].endpoint)
    assert.is_true(s:version("b") > b_version)
    assert.is_nil(s:read("c"))
    assert.same({ "a", "b", "d" }, s:names())
    assert.equal("i1", s:instance(), "the instance id changes only with an empty dict")
  end)
end)
