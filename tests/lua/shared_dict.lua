--- A stand-in for ngx.shared.DICT under plain LuaJIT, with nginx's semantics for the calls
--- clbagent's Lua makes: safe_set/set and add refuse a new key when ``capacity`` keys are held
--- ("no memory", never evicting another), add refuses an existing key, incr creates a key only
--- with an initial value. Used by the unit specs and bench/balancer_micro.lua.
local M = {}

function M.new(capacity)
  local d = { data = {}, n = 0 }
  local limit = capacity or math.huge
  local function store(self, k, v)
    if self.data[k] == nil then
      if self.n >= limit then
        return false, "no memory"
      end
      self.n = self.n + 1
    end
    self.data[k] = v
    return true
  end
  function d:get(k)
    return self.data[k]
  end
  d.safe_set = store
  d.set = store
  function d:add(k, v)
    if self.data[k] ~= nil then
      return false, "exists"
    end
    return store(self, k, v)
  end
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
      self.data[k], self.n = nil, self.n - 1
    end
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

return M
