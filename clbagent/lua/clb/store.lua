--- The upstreams in shared memory (lua_shared_dict clb_upstreams), one entry per upstream:
---   "d:<name>" the normalized upstream as JSON, "v:<name>" its version, "s:<name>" where it came
---   from ("file" or "channel"); "seq" the last version handed out (versions never repeat, not
---   even for an upstream deleted and created again); "instance" an id set when the dict was
---   found empty, so the agent can tell that nginx lost what it had sent (a changed dict size);
---   "gen" a counter moved after every change of any "v:" key, so that one short read tells a
---   worker whether anything changed since it last looked (see clb.balancer).
--- Writes use safe_set: a full dict refuses the write instead of evicting another upstream.
---
--- "gen" is also mirrored in the gen word: 8 bytes of the file ``run/upstreams.gen`` of nginx's
--- prefix, mapped shared by the master (init_by_lua, at start and every reload) and so by every
--- worker it forks, of this generation and the next ones. A worker compares it with the value it
--- last saw with one memory read, without the dict's lock and lookup. The writer stores the value
--- its own incr of "gen" returned, after the change; a reader that sees a value reads the versions
--- after it, so it sees every change made before that value was handed out.
local cjson = require("cjson.safe")
local ffi = require("ffi")

local M = {}
M.__index = M

M.GEN = "gen"
M.WORD_FILE = "run/upstreams.gen"

ffi.cdef([[
int open(const char *path, int flags, ...);
int close(int fd);
int ftruncate(int fd, int64_t length);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset);
int munmap(void *addr, size_t length);
]])
local O_RDWR, PROT_RW, MAP_SHARED, WORD = 2, 3, 1, 8

--- Map the gen word from ``path`` (created when missing); M.word is then a double[1] in shared
--- memory, else nil (the balancer then reads "gen" from the dict: slower, as correct). The mapping
--- goes away with the Lua state that made it (a reload replaces the master's).
function M.map_word(path)
  M.word = nil
  local f = io.open(path, "ab")
  if not f then
    return nil
  end
  f:close()
  local fd = ffi.C.open(path, O_RDWR)
  if fd < 0 then
    return nil
  end
  local p = nil
  if ffi.C.ftruncate(fd, WORD) == 0 then
    p = ffi.C.mmap(nil, WORD, PROT_RW, MAP_SHARED, fd, 0)
  end
  ffi.C.close(fd)
  if p == nil or ffi.cast("intptr_t", p) == -1 then
    return nil
  end
  M.word = ffi.gc(ffi.cast("double *", p), function(w)
    ffi.C.munmap(w, WORD)
  end)
  return M.word
end

--- Make the gen word say the dict's "gen" (after seeding: values left by an earlier nginx or dict
--- mean nothing to the new one).
function M:publish()
  if M.word then
    M.word[0] = self.dict:get(M.GEN) or 0
  end
end

function M.new(dict)
  return setmetatable({ dict = dict }, M)
end

--- After a "v:" key changed: a reader that saw the old "gen" looks at the versions again. (Moved
--- after the change, never before: a reader that sees the new "gen" then reads the new version.)
function M:changed()
  local gen = self.dict:incr(M.GEN, 1, 0)
  if gen and M.word then
    M.word[0] = gen
  end
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
