--- L7 metrics counted inside nginx (docs/metrics.md).
---
--- Every location the compiler writes sets a variable to its scope, "<lb>/<listener>/<rule>/<domain>"
--- made of configuration IDs only (the domain percent-encoded); the log phase adds the request to
--- that scope and to the backend member that answered last. Nothing a client sends becomes a key,
--- so the number of keys is bounded by the configuration.
---
--- Each worker adds into plain Lua tables (no lock, no allocation per request) and flushes them
--- into lua_shared_dict clb_metrics once a second, when it exits, and directly while it drains
--- after a reload. The dict keeps its contents across a reload while its size is unchanged; a
--- restart empties it (the counters start again at zero, as Prometheus expects of a restart).
---
--- Shared-dict keys: "<scope>\t<field>" and "<scope>\t<member>\t<field>", numbers. /metrics on
--- the control channel answers their Prometheus text (clb.metrics_text); the agent adds it to its
--- own.
local cjson = require("cjson.safe")
local text = require("clb.metrics_text")

local ngx = ngx
local tonumber, pairs, find, match, sub = tonumber, pairs, string.find, string.match, string.sub

local M = {}

--- Upper bounds (seconds) of the request and upstream time histograms; +Inf is implicit.
M.BUCKETS = { 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 10 } -- few: buckets are most of the series
local BUCKETS, NB = M.BUCKETS, #M.BUCKETS
local FLUSH_SECONDS = 1

-- Field numbers of a scope. Requests by status class (1..5) and source: backend answered (b) or
-- the load balancer generated the response (l).
local REQ_B, REQ_L = 0, 5 -- + class (1..5)
local S404_B, S404_L, S502_B, S502_L, S504_B, S504_L = 11, 12, 13, 14, 15, 16
local TIMEOUTS, BYTES_IN, BYTES_OUT, NEW_CONNS = 17, 18, 19, 20
local RT_SUM, RT_BUCKET = 21, 21 -- + bucket index 1..NB+1
local UT_SUM = RT_BUCKET + NB + 2
local UT_COUNT, UT_BUCKET = UT_SUM + 1, UT_SUM + 1 -- + bucket index 1..NB+1
local NFIELDS = UT_BUCKET + NB + 1

-- Member fields: requests by class and source, upstream time sum and count, bytes.
local M_REQ_B, M_REQ_L, M_UT_SUM, M_UT_COUNT, M_BYTES_IN, M_BYTES_OUT = 0, 5, 11, 12, 13, 14
local MFIELDS = 14

local function field_names()
  local names, member = {}, {}
  for class = 1, 5 do
    names[REQ_B + class] = "req " .. class .. "xx backend"
    names[REQ_L + class] = "req " .. class .. "xx lb"
    member[M_REQ_B + class] = "req " .. class .. "xx backend"
    member[M_REQ_L + class] = "req " .. class .. "xx lb"
  end
  names[S404_B], names[S404_L] = "code 404 backend", "code 404 lb"
  names[S502_B], names[S502_L] = "code 502 backend", "code 502 lb"
  names[S504_B], names[S504_L] = "code 504 backend", "code 504 lb"
  names[TIMEOUTS], names[BYTES_IN], names[BYTES_OUT], names[NEW_CONNS] = "timeouts", "bytes in", "bytes out", "conns"
  names[RT_SUM], names[UT_SUM], names[UT_COUNT] = "rt sum", "ut sum", "ut count"
  for i = 1, NB + 1 do
    local le = BUCKETS[i] and tostring(BUCKETS[i]) or "+Inf"
    names[RT_BUCKET + i] = "rt " .. le
    names[UT_BUCKET + i] = "ut " .. le
  end
  member[M_UT_SUM], member[M_UT_COUNT] = "ut sum", "ut count"
  member[M_BYTES_IN], member[M_BYTES_OUT] = "bytes in", "bytes out"
  return names, member
end
M.FIELDS, M.MEMBER_FIELDS = field_names()

local scopes = {} -- scope → array of NFIELDS numbers (this worker's counts since the last flush)
local members = {} -- scope → member → array of MFIELDS numbers
local keys = {} -- scope (or scope\tmember) → field → shared-dict key, built once

local function zeros(n)
  local t = {}
  for i = 1, n do
    t[i] = 0
  end
  return t
end

local function bucket(seconds)
  for i = 1, NB do
    if seconds <= BUCKETS[i] then
      return i
    end
  end
  return NB + 1
end

--- The last of nginx's per-try values, separated by ", " (tries) and " : " (internal redirects):
--- "0.003, 0.002 : 0.001", "10.0.0.1:80, 10.0.0.2:80".
local function last(value)
  if value and find(value, " ", 1, true) then
    return match(value, "([^ ]+)$")
  end
  return value
end

local function add(dict, key, n)
  -- incr never allocates when the key exists; safe_add never evicts another counter when full
  if dict:incr(key, n) then
    return true
  end
  local ok, err = dict:safe_add(key, n)
  if ok or err == "exists" then
    return ok or dict:incr(key, n) ~= nil
  end
  return false
end

local function flush_array(dict, prefix, counts, names)
  local ks = keys[prefix]
  if not ks then
    ks = {}
    keys[prefix] = ks
  end
  local lost = 0
  for i = 1, #counts do
    local n = counts[i]
    if n ~= 0 then
      local key = ks[i]
      if not key then
        key = prefix .. "\t" .. names[i]
        ks[i] = key
      end
      if add(dict, key, n) then
        counts[i] = 0
      else
        lost = lost + 1
      end
    end
  end
  return lost
end

--- Move this worker's counts into shared memory.
function M.flush()
  local dict = ngx.shared.clb_metrics
  if not dict then
    return
  end
  local lost = 0
  for scope, counts in pairs(scopes) do
    lost = lost + flush_array(dict, scope, counts, M.FIELDS)
  end
  for scope, by_member in pairs(members) do
    for member, counts in pairs(by_member) do
      lost = lost + flush_array(dict, scope .. "\t" .. member, counts, M.MEMBER_FIELDS)
    end
  end
  if lost > 0 then -- a full dict refuses new keys (never evicts): the counts wait in the worker
    ngx.log(ngx.WARN, "clb metrics: shared dict clb_metrics is full, ", lost, " counters kept for the next flush")
  end
end

local draining = false -- the timer ran its last time: this worker exits after its last requests

local function tick(premature)
  M.flush()
  if premature then
    draining = true
    scopes, members = {}, {}
  end
end

--- init_worker_by_lua: flush once a second (and one last time when the worker exits).
function M.start()
  local ok, err = ngx.timer.every(FLUSH_SECONDS, tick)
  if not ok then
    ngx.log(ngx.ERR, "clb metrics: no flush timer: ", err)
  end
end

--- log_by_lua: count the request in the scope its location set in variable ``scope_var``.
function M.log(scope_var)
  local var = ngx.var
  local scope = var[scope_var]
  if not scope or scope == "" then
    return
  end
  local counts = scopes[scope]
  if not counts then
    counts = zeros(NFIELDS)
    scopes[scope] = counts
  end
  local status = ngx.status
  local class = status >= 100 and status < 600 and (status - status % 100) / 100 or 4 -- 0: no response
  local header_time = last(var.upstream_header_time)
  local backend = header_time ~= nil and header_time ~= "-" and header_time ~= ""
  local src = backend and REQ_B or REQ_L
  counts[src + class] = counts[src + class] + 1
  if status == 404 then
    local i = backend and S404_B or S404_L
    counts[i] = counts[i] + 1
  elseif status == 502 then
    local i = backend and S502_B or S502_L
    counts[i] = counts[i] + 1
  elseif status == 504 then
    local i = backend and S504_B or S504_L
    counts[i] = counts[i] + 1
    if not backend then
      counts[TIMEOUTS] = counts[TIMEOUTS] + 1
    end
  end
  local bytes_in, bytes_out = tonumber(var.request_length) or 0, tonumber(var.bytes_sent) or 0
  counts[BYTES_IN] = counts[BYTES_IN] + bytes_in
  counts[BYTES_OUT] = counts[BYTES_OUT] + bytes_out
  if var.connection_requests == "1" then
    counts[NEW_CONNS] = counts[NEW_CONNS] + 1
  end
  local rt = ngx.now() - ngx.req.start_time() -- $request_time, without reading a variable
  counts[RT_SUM] = counts[RT_SUM] + rt
  local b = RT_BUCKET + bucket(rt)
  counts[b] = counts[b] + 1

  local ut = tonumber(last(var.upstream_response_time))
  local addr = ut and last(var.upstream_addr)
  if ut then
    counts[UT_SUM] = counts[UT_SUM] + ut
    counts[UT_COUNT] = counts[UT_COUNT] + 1
    b = UT_BUCKET + bucket(ut)
    counts[b] = counts[b] + 1
  end
  -- a member is an address of the configuration ("ip:port", "[v6]:port"), never an upstream name
  if addr and find(addr, "^[%d%[]") then
    local by_member = members[scope]
    if not by_member then
      by_member = {}
      members[scope] = by_member
    end
    local mc = by_member[addr]
    if not mc then
      mc = zeros(MFIELDS)
      by_member[addr] = mc
    end
    local msrc = backend and M_REQ_B or M_REQ_L
    mc[msrc + class] = mc[msrc + class] + 1
    mc[M_UT_SUM] = mc[M_UT_SUM] + ut
    mc[M_UT_COUNT] = mc[M_UT_COUNT] + 1
    mc[M_BYTES_IN] = mc[M_BYTES_IN] + bytes_in
    mc[M_BYTES_OUT] = mc[M_BYTES_OUT] + bytes_out
  end
  if draining then -- after a reload: no timer flushes any more
    M.flush()
  end
end

local splits = {} -- shared-dict key → {1 (scope) or 2 (member), head, field}, built once per key

--- A key split at its last tab: the scope (or "<scope>\t<member>") and the field; false for others.
local function split(key)
  local parts = splits[key]
  if parts == nil then
    local a = find(key, "\t", 1, true)
    local b = a and find(key, "\t", a + 1, true)
    if b then
      parts = { 2, sub(key, 1, b - 1), sub(key, b + 1) }
    elseif a then
      parts = { 1, sub(key, 1, a - 1), sub(key, a + 1) }
    else
      parts = false
    end
    splits[key] = parts
  end
  return parts
end

--- The load balancers named by a POST body {"served": [id, ...]}; nil for a GET (all of them).
local function served_of_body()
  if ngx.req.get_method() ~= "POST" then
    return nil
  end
  ngx.req.read_body()
  local doc = cjson.decode(ngx.req.get_body_data() or "")
  if type(doc) ~= "table" or type(doc.served) ~= "table" then
    return nil, 'the body is not {"served": [load balancer IDs]}'
  end
  local served = {}
  for _, id in ipairs(doc.served) do
    if type(id) == "string" then
      served[id] = true
    end
  end
  return served
end

--- content_by_lua of /metrics on the control channel: the Prometheus text of every counter (GET),
--- or of the load balancers a POST names (the agent's served ones: counters of a removed load
--- balancer stay in the dict until nginx restarts, but are not reported).
function M.dump()
  local dict = ngx.shared.clb_metrics
  ngx.header["Content-Type"] = "text/plain; version=0.0.4"
  local served, err = served_of_body()
  if err or not dict then
    ngx.status = err and 400 or 404
    ngx.say(err or "this nginx counts no metrics (no lua_shared_dict clb_metrics)")
    return ngx.exit(ngx.HTTP_OK)
  end
  local groups = { {}, {} } -- scope → field → n; "<scope>\t<member>" → field → n
  for _, key in ipairs(dict:get_keys(0)) do
    local parts = split(key)
    if parts then
      local group = groups[parts[1]]
      local t = group[parts[2]]
      if not t then
        t = {}
        group[parts[2]] = t
      end
      t[parts[3]] = dict:get(key)
    end
  end
  local scope_counts, member_counts = groups[1], groups[2]
  ngx.print(text.render(scope_counts, member_counts, BUCKETS, served))
  return ngx.exit(ngx.HTTP_OK)
end

return M
