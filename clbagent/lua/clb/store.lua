--- The upstreams in shared memory (lua_shared_dict clb_upstreams), one entry per upstream:
---   "d:<name>" the normalized upstream as JSON, "v:<name>" its version, "s:<name>" where it came
---   from ("file" or "channel"); "seq" the last version handed out (versions never repeat, not
---   even for an upstream deleted and created again); "instance" an id set when the dict was
---   found empty, so the agent can tell that nginx lost what it had sent (a changed dict size);
---   "gen" a counter moved after every change of any "v:" key, so that one short read tells a
---   worker whether anything changed since it last looked (see clb.balancer).
--- Writes use safe_set: a full dict refuses the write instead of evicting another upstream.
local cjson = require("cjson.safe")

local M = {}
M.__index = M

M.GEN = "gen"

function M.new(dict)
  return setmetatable({ dict = dict }, M)
end

--- After a "v:" key changed: a reader that saw the old "gen" looks at the versions again. (Moved
--- after the change, never before: a reader that sees the new "gen" then reads the new version.)
function M:changed()
  self.dict:incr(M.GEN, 1, 0)
end

--- The key of an upstream's version ("v:<name>"): the balancer reads it on every request.
function M.version_key(name)
  return "v:" .. name
end

function M:version(name)
  return (self.dict:get(M.version_key(name)))
end

--- The normalized upstream and its version, or nil.
function M:read(name)
  local version = self.dict:get("v:" .. name)
  local data = self.dict:get("d:" .. name)
  if not version or not data then
    return nil
  end
  return cjson.decode(data), version
end

--- Store one upstream; returns its new version, or nil and an error ("no memory").
function M:write(name, upstream, source)
  local data = cjson.encode(upstream)
  local dict = self.dict
  if dict:get("d:" .. name) == data and dict:get("v:" .. name) then
    dict:safe_set("s:" .. name, source)
    return dict:get("v:" .. name)
  end
  local ok, err = dict:safe_set("d:" .. name, data)
  if ok then
    ok, err = dict:safe_set("s:" .. name, source)
  end
  if not ok then
    return nil, err
  end
  local version = dict:incr("seq", 1, 0)
  ok, err = dict:safe_set("v:" .. name, version)
  if not ok then
    return nil, err
  end
  self:changed()
  return version
end

function M:remove(name)
  local existed = self.dict:get("v:" .. name) ~= nil
  self.dict:delete("v:" .. name) -- first: workers stop using the upstream
  self.dict:delete("d:" .. name)
  self.dict:delete("s:" .. name)
  if existed then
    self:changed()
  end
  return existed
end

--- Names of the stored upstreams, sorted.
function M:names()
  local out = {}
  for _, key in ipairs(self.dict:get_keys(0)) do
    if key:sub(1, 2) == "v:" then
      out[#out + 1] = key:sub(3)
    end
  end
  table.sort(out)
  return out
end

function M:instance()
  return self.dict:get("instance")
end

--- At nginx start and reload: install the upstreams of the data file. One the agent sent over
--- the channel is kept (the agent is the source of truth and re-sends after a reload), one that
--- came from an earlier file is replaced, one the file no longer has is removed (its rule is
--- gone). Returns nil and an error when the dict is too small for the file.
function M:seed(upstreams, instance_id)
  if not self.dict:get("instance") then
    self.dict:set("instance", instance_id)
  end
  for _, name in ipairs(self:names()) do
    if upstreams[name] == nil then
      self:remove(name)
    end
  end
  local names = {}
  for name in pairs(upstreams) do
    names[#names + 1] = name
  end
  table.sort(names)
  for _, name in ipairs(names) do
    if self.dict:get("s:" .. name) ~= "channel" then
      local ok, err = self:write(name, upstreams[name], "file")
      if not ok then
        return nil, "upstream " .. name .. ": " .. tostring(err)
      end
    end
  end
  return true
end

return M
