--- L7 metrics counted inside nginx (docs/metrics.md).
---
--- Every location the compiler writes sets a variable to its scope, "<lb>/<listener>/<rule>/<domain>"
--- made of configuration IDs only (the domain percent-encoded); the log phase adds the request to
--- that scope and to the backend member that answered last. Nothing a client sends becomes a key,
--- so the number of keys is bounded by the configuration.
---
--- Each worker adds into plain Lua tables (no lock, no allocation per request) and merges them
--- into lua_shared_dict clb_metrics once a second, when it exits, and directly while it drains
--- after a reload. The dict keeps its contents across a reload while its size is unchanged; a
--- restart empties it (the counters start again at zero, as Prometheus expects of a restart).
---
--- Shared-dict keys: "\2<scope>" and "\3<scope>\t<member>", each one record of doubles
--- (clb.metrics_text); "\1<key>" locks a record while a worker merges into it. /metrics on the
--- control channel answers their Prometheus text; the agent adds it to its own.
local cjson = require("cjson.safe")
local text = require("clb.metrics_text")

local ngx = ngx
local tonumber, pairs, byte, find, match, sub = tonumber, pairs, string.byte, string.find, string.match, string.sub

local M = {}

local BUCKETS, NB = text.BUCKETS, #text.BUCKETS
local FLUSH_SECONDS = 1
local LOCK_SECONDS = 1 -- a lock whose holder died frees itself after this
local LOCK_TRIES = 1000

local REQ_B, REQ_L = text.REQ_B, text.REQ_L
local S404_B, S404_L, S502_B, S502_L, S504_B, S504_L = text.S404_B, text.S404_L, text.S502_B, text.S502_L, text.S504_B, text.S504_L
local TIMEOUTS, BYTES_IN, BYTES_OUT, NEW_CONNS = text.TIMEOUTS, text.BYTES_IN, text.BYTES_OUT, text.NEW_CONNS
local RT_SUM, RT_BUCKET, UT_SUM, UT_COUNT, UT_BUCKET = text.RT_SUM, text.RT_BUCKET, text.UT_SUM, text.UT_COUNT, text.UT_BUCKET
local NFIELDS, MFIELDS = text.NFIELDS, text.MFIELDS
local M_REQ_B, M_REQ_L, M_UT_SUM, M_UT_COUNT = text.M_REQ_B, text.M_REQ_L, text.M_UT_SUM, text.M_UT_COUNT
local M_BYTES_IN, M_BYTES_OUT = text.M_BYTES_IN, text.M_BYTES_OUT

local scopes = {} -- scope → array of NFIELDS numbers (this worker's counts since the last flush)
local members = {} -- scope → member → array of MFIELDS numbers
local keys = {} -- scope (or scope\tmember) → {record key, lock key}, built once

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
  if find(value, " ", 1, true) then
    return match(value, "([^ ]+)$")
  end
  return value
end

local function key_of(name, prefix)
  local k = keys[name]
  if not k then
    k = { prefix .. name, "\1" .. prefix .. name }
    keys[name] = k
  end
  return k
end

--- Add ``counts`` (1..n) into the record ``k`` under its lock; zero them once added. False when
--- the lock stays taken or the dict is full (never evicting): the counts wait for the next flush.
local function merge(dict, k, counts, n, can_wait)
  local any = false
  for i = 1, n do
    if counts[i] ~= 0 then
      any = true
      break
    end
  end
  if not any then
    return true
  end
  for _ = 1, LOCK_TRIES do
    local locked, err = dict:add(k[2], true, LOCK_SECONDS)
    if locked then
      local ok = dict:safe_set(k[1], text.merge(dict:get(k[1]), counts, n))
      dict:delete(k[2])
      if ok then
        for i = 1, n do
          counts[i] = 0
        end
      end
      return ok ~= nil and ok ~= false
    end
    if err ~= "exists" then
      return false
    end
    if can_wait then
      ngx.sleep(0.001)
    end
  end
  return false
end

--- Move this worker's counts into shared memory (``can_wait``: in a timer, may sleep on a lock).
function M.flush(can_wait)
  local dict = ngx.shared.clb_metrics
  if not dict then
    return
  end
  local lost = 0
  for scope, counts in pairs(scopes) do
    if not merge(dict, key_of(scope, "\2"), counts, NFIELDS, can_wait) then
      lost = lost + 1
    end
  end
  for scope, by_member in pairs(members) do
    for member, counts in pairs(by_member) do
      if not merge(dict, key_of(scope .. "\t" .. member, "\3"), counts, MFIELDS, can_wait) then
        lost = lost + 1
      end
    end
  end
  if lost > 0 then -- a full dict refuses new keys (never evicts): the counts wait in the worker
    ngx.log(ngx.WARN, "clb metrics: ", lost, " records not written to clb_metrics (full or locked), kept for the next flush")
  end
end

local draining = false -- the timer ran its last time: this worker exits after its last requests

local function tick(premature)
  M.flush(true)
  if premature then
    draining = true
  end
end

--- init_worker_by_lua: flush once a second (and one last time when the worker exits).
function M.start()
  local ok, err = ngx.timer.every(FLUSH_SECONDS, tick)
  if not ok then
    ngx.log(ngx.ERR, "clb metrics: no flush timer: ", err)
  end
end

--- log_by_lua: count the request in the scope its location set in variable ``scope_var`` and in
--- the member its last try went to. Each value is its own ngx.var read inside this (compiled)
--- function: measured with wrk on the compiled path, one variable that nginx maps to all of them
--- joined cost as much (nginx evaluates its variables twice, for its length and for its text, and
--- Lua has to cut it apart). The upstream's variables are read only when there was an upstream.
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
  local status = tonumber(var.status) or 0
  local class = status >= 100 and status < 600 and (status - status % 100) / 100 or 4 -- 0: no response
  local addr_all = var.upstream_addr
  local uht = addr_all and var.upstream_header_time
  -- the backend answered when the last try's $upstream_header_time is a time, not "-"
  local backend = uht ~= nil and byte(uht, -1) ~= 45
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
  local rt = tonumber(var.request_time) or 0
  counts[RT_SUM] = counts[RT_SUM] + rt
  local i = RT_BUCKET + bucket(rt)
  counts[i] = counts[i] + 1

  local urt = addr_all and var.upstream_response_time
  local ut = urt and tonumber(last(urt))
  local addr
  if ut then
    counts[UT_SUM] = counts[UT_SUM] + ut
    counts[UT_COUNT] = counts[UT_COUNT] + 1
    i = UT_BUCKET + bucket(ut)
    counts[i] = counts[i] + 1
    addr = last(addr_all)
    -- a member is an address of the configuration ("ip:port", "[v6]:port"), never an upstream name
    local first = byte(addr, 1)
    if first and (first == 91 or (first >= 48 and first <= 57)) then
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
  end
  if draining then -- after a reload no timer flushes any more: this request's records, directly
    local dict = ngx.shared.clb_metrics
    if dict then
      merge(dict, key_of(scope, "\2"), counts, NFIELDS, false)
      local mc = ut and members[scope] and members[scope][addr]
      if mc then
        merge(dict, key_of(scope .. "\t" .. addr, "\3"), mc, MFIELDS, false)
      end
    end
  end
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

local names = {} -- record key → scope or "<scope>\t<member>", built once per key

--- content_by_lua of /metrics on the control channel: the Prometheus text of every counter (GET),
--- or of the load balancers a POST names (the agent's served ones: counters of a removed load
--- balancer stay in the dict until nginx restarts, but are not reported), and nginx's connections.
function M.dump()
  local dict = ngx.shared.clb_metrics
  ngx.header["Content-Type"] = "text/plain; version=0.0.4"
  local served, err = served_of_body()
  if err or not dict then
    ngx.status = err and 400 or 404
    ngx.say(err or "this nginx counts no metrics (no lua_shared_dict clb_metrics)")
    return ngx.exit(ngx.HTTP_OK)
  end
  local groups = { [2] = {}, [3] = {} } -- scope → record; "<scope>\t<member>" → record
  for _, key in ipairs(dict:get_keys(0)) do
    local group = groups[byte(key, 1)]
    if group then
      local name = names[key]
      if not name then
        name = sub(key, 2)
        names[key] = name
      end
      group[name] = dict:get(key)
    end
  end
  local var, connections = ngx.var, {}
  for _, state in ipairs(text.CONNECTION_STATES) do
    connections[state] = var["connections_" .. state]
  end
  local out = text.render(groups[2], groups[3], served, connections)
  ngx.header["Content-Length"] = #out -- read in one piece, not in chunks
  ngx.print(out)
  return ngx.exit(ngx.HTTP_OK)
end

return M
