--- L7 metrics counted inside nginx (docs/metrics.md).
---
--- Every location the compiler writes sets a variable to its scope, "<lb>/<listener>/<rule>/<domain>"
--- made of configuration IDs only (the domain percent-encoded); the request is counted under that
--- scope and under the backend member that answered last. Nothing a client sends becomes a key,
--- so the number of keys is bounded by the configuration.
---
--- The log phase does as little as it can: it takes the status and the time through the FFI,
--- the request's other values and its scope as numbers and pointers from clbagent's own nginx
--- module (clbagent/nginx/module, clb_metrics_values), and keeps them in buffers of the worker.
--- Where nginx runs without that module, it reads instead one nginx variable that holds the
--- values joined as text (clbagent/nginx/metrics_channel.py: LOG_FIELDS). The buffers are added into plain Lua tables in one loop, which LuaJIT compiles and which runs
--- with its data in the cache: when they are full, before every flush and before the control
--- channel answers the counters. Each worker merges the tables into
--- lua_shared_dict clb_metrics once a second, when it exits, and directly while it drains after a
--- reload. The dict keeps its contents across a reload while its size is unchanged; a restart
--- empties it (the counters start again at zero, as Prometheus expects of a restart).
---
--- Shared-dict keys: "\2<scope>" and "\3<scope>\t<member>", each one record of doubles
--- (clb.metrics_text); "\1<key>" locks a record while a worker merges into it. /metrics on the
--- control channel answers their Prometheus text; the agent adds it to its own.
local cjson = require("cjson.safe")
local ffi = require("ffi")
local new_tab = require("table.new")
local text = require("clb.metrics_text")

local ngx = ngx
local ngx_var, now, start_time = ngx.var, ngx.now, ngx.req.start_time
local tonumber, pairs, byte, find, sub, floor = tonumber, pairs, string.byte, string.find, string.sub, math.floor
local ffi_string = ffi.string

local M = {}

local BUCKETS, NB = text.BUCKETS, #text.BUCKETS
local FLUSH_SECONDS = 1
local LOCK_SECONDS = 1 -- a lock whose holder died frees itself after this
local LOCK_TRIES = 1000
local BATCH = 512 -- requests kept before they are added into the counters
M.BATCH = BATCH
local SEP, DASH = 124, 45 -- "|" between the joined values, "-" for no time

local REQ_B, REQ_L = text.REQ_B, text.REQ_L
local S404_B, S404_L, S502_B, S502_L, S504_B, S504_L = text.S404_B, text.S404_L, text.S502_B, text.S502_L, text.S504_B, text.S504_L
local TIMEOUTS, BYTES_IN, BYTES_OUT, NEW_CONNS = text.TIMEOUTS, text.BYTES_IN, text.BYTES_OUT, text.NEW_CONNS
local RT_SUM, RT_BUCKET, UT_SUM, UT_COUNT, UT_BUCKET = text.RT_SUM, text.RT_BUCKET, text.UT_SUM, text.UT_COUNT, text.UT_BUCKET
local NFIELDS, MFIELDS = text.NFIELDS, text.MFIELDS
local M_REQ_B, M_REQ_L, M_UT_SUM, M_UT_COUNT = text.M_REQ_B, text.M_REQ_L, text.M_UT_SUM, text.M_UT_COUNT
local M_BYTES_IN, M_BYTES_OUT = text.M_BYTES_IN, text.M_BYTES_OUT

local scopes = {} -- scope → array of NFIELDS numbers (this worker's counts since the last flush)
local members = {} -- scope → member → array of MFIELDS numbers
local draining = false -- the timer ran its last time: this worker exits after its last requests
local keys = {} -- scope (or scope\tmember) → {record key, lock key}, built once

local function zeros(n)
  local t = {}
  for i = 1, n do
    t[i] = 0
  end
  return t
end

local BUCKETS_MS = {} -- the bounds in whole milliseconds, as nginx writes its times
for i = 1, NB do
  BUCKETS_MS[i] = floor(BUCKETS[i] * 1000 + 0.5)
end

local function bucket(ms)
  for i = 1, NB do
    if ms <= BUCKETS_MS[i] then
      return i
    end
  end
  return NB + 1
end

--- Milliseconds of the time nginx writes as "%T.%03M" (seconds, a dot, three digits) at s[i..];
--- nil for "-" (no time). Parsed by hand: tonumber() of a decimal fraction takes LuaJIT's exact
--- decimal conversion, which costs more than the rest of the count.
local function ms_at(s, i)
  local dot = byte(s, i) ~= DASH and find(s, ".", i, true)
  if not dot then
    return nil
  end
  local whole = dot == i + 1 and byte(s, i) - 48 or tonumber(sub(s, i, dot - 1))
  local d1, d2, d3 = byte(s, dot + 1, dot + 3)
  return whole * 1000 + (d1 - 48) * 100 + (d2 - 48) * 10 + d3 - 48
end

--- The start of the last of nginx's per-try values in s[i..j], separated by ", " (tries) and
--- " : " (internal redirects): "0.003, 0.002 : 0.001", "10.0.0.1:80, 10.0.0.2:80"; j + 1 when
--- the values end with " : " (the last upstream made no try).
local function last_start(s, i, j)
  local sp = find(s, " ", i, true) -- a single try (the usual case) has no space
  if not sp or sp > j then
    return i
  end
  local k = find(sub(s, i, j), "[^ ]+$")
  return k and i - 1 + k or j + 1
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

--- The values of the joined variable (LOG_FIELDS), "<request_length>|<bytes_sent>|
--- <connection_requests>|<upstream_header_time>|<upstream_response_time>|<upstream_addr>|<scope>"
--- (the upstream values empty without an upstream), as ``add`` takes them: the scope, the bytes
--- in and out, whether the request was the connection's first, whether the last try's response
--- header came from a backend, the last try's time in milliseconds (-1: none) and its address
--- (false: none). This is the path without nginx's module of the counters (clb_metrics_values).
local function parse(s)
  local c = find(s, "|", 1, true)
  local bytes_in = tonumber(sub(s, 1, c - 1)) or 0
  local d = find(s, "|", c + 1, true)
  local bytes_out = tonumber(sub(s, c + 1, d - 1)) or 0
  local e = find(s, "|", d + 1, true)
  local new_conn = e == d + 2 and byte(s, d + 1) == 49 -- the connection's first request: "1"
  local f = find(s, "|", e + 1, true)
  local g = find(s, "|", f + 1, true)
  local h = find(s, "|", g + 1, true)
  local scope = sub(s, h + 1)
  -- the backend answered when the last try's $upstream_header_time is a time (its last
  -- character a digit), not "-" (no header) nor " : " (no try)
  local last = byte(s, f - 1)
  local backend = f > e + 1 and last >= 48 and last <= 57
  if g == f + 1 then -- no upstream
    return scope, bytes_in, bytes_out, new_conn, backend, -1, false
  end
  local k = last_start(s, f + 1, g - 1)
  local ut_ms = k < g and ms_at(s, k) or -1
  k = last_start(s, g + 1, h - 1)
  return scope, bytes_in, bytes_out, new_conn, backend, ut_ms, k < h and sub(s, k, h - 1)
end

--- Add one request into this worker's counters: its status, its time in milliseconds (as
--- $request_time has it) and the values ``parse`` describes. Returns the scope, and the member's
--- counts and address.
local function add(status, rt_ms, scope, bytes_in, bytes_out, new_conn, backend, ut_ms, addr)
  local counts = scopes[scope]
  if not counts then
    counts = zeros(NFIELDS)
    scopes[scope] = counts
  end
  local class = status >= 100 and status < 600 and (status - status % 100) / 100 or 4 -- 0: no response
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
  counts[BYTES_IN] = counts[BYTES_IN] + bytes_in
  counts[BYTES_OUT] = counts[BYTES_OUT] + bytes_out
  if new_conn then
    counts[NEW_CONNS] = counts[NEW_CONNS] + 1
  end
  counts[RT_SUM] = counts[RT_SUM] + rt_ms / 1000
  local i = RT_BUCKET + bucket(rt_ms)
  counts[i] = counts[i] + 1
  if ut_ms < 0 then -- no upstream, or its last try has no time
    return scope
  end
  local ut = ut_ms / 1000
  counts[UT_SUM] = counts[UT_SUM] + ut
  counts[UT_COUNT] = counts[UT_COUNT] + 1
  i = UT_BUCKET + bucket(ut_ms)
  counts[i] = counts[i] + 1
  -- a member is an address of the configuration ("ip:port", "[v6]:port"), never an upstream name
  local first = addr and byte(addr, 1)
  if not first or not (first == 91 or (first >= 48 and first <= 57)) then
    return scope
  end
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
  return scope, mc, addr
end

-- The requests not yet added: status, milliseconds and either the joined variable (without the
-- module) or the values themselves (with it).
local statuses, times, npending = new_tab(BATCH, 0), new_tab(BATCH, 0), 0
local joined = new_tab(BATCH, 0)
local b_scope, b_in, b_out, b_new = new_tab(BATCH, 0), new_tab(BATCH, 0), new_tab(BATCH, 0), new_tab(BATCH, 0)
local b_backend, b_ut, b_addr = new_tab(BATCH, 0), new_tab(BATCH, 0), new_tab(BATCH, 0)

-- nginx's module of the counters (clbagent/nginx/module), when nginx loaded it: the values as
-- numbers, with no text formatted by nginx nor parsed here.
pcall(ffi.cdef, [[
int clb_metrics_values(void *r, double *out, const unsigned char **addr, size_t *addr_len,
                       intptr_t scope_index, const unsigned char **scope, size_t *scope_len);
intptr_t clb_metrics_variable_index(void *r, const char *name, size_t len);
]]) -- pcall: declared once per Lua state, whoever loads this file again
local C = ffi.C
M.module = pcall(function()
  return C.clb_metrics_values and C.clb_metrics_variable_index
end)
local get_request = M.module and require("resty.core.base").get_request
local vals = ffi.new("double[5]")
local addr_p, addr_len = ffi.new("const unsigned char *[1]"), ffi.new("size_t[1]")
local scope_p, scope_len = ffi.new("const unsigned char *[1]"), ffi.new("size_t[1]")
local scope_index -- of the scope variable, looked up at the first request

--- Add the buffered requests into the counters: one loop over values that are still in the
--- cache, which LuaJIT compiles once (the log phase itself runs between two requests' other work).
local function add_pending()
  local n = npending
  npending = 0
  if M.module then
    for j = 1, n do
      add(statuses[j], times[j], b_scope[j], b_in[j], b_out[j], b_new[j], b_backend[j], b_ut[j], b_addr[j])
    end
  else
    for j = 1, n do
      add(statuses[j], times[j], parse(joined[j]))
    end
  end
end

--- Move this worker's counts into shared memory (``can_wait``: in a timer, may sleep on a lock).
function M.flush(can_wait)
  add_pending()
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

--- The request's values from nginx's module: the scope (nil: not counted) and the values
--- ``parse`` describes.
local function values(scope_var)
  local r = get_request()
  if not scope_index then
    scope_index = tonumber(C.clb_metrics_variable_index(r, scope_var, #scope_var))
  end
  if scope_index < 0 or C.clb_metrics_values(r, vals, addr_p, addr_len, scope_index, scope_p, scope_len) == 0 then
    return nil
  end
  local n = tonumber(scope_len[0])
  if n == 0 then
    return nil
  end
  local addr = false
  local alen = tonumber(addr_len[0])
  if alen > 0 then
    addr = ffi_string(addr_p[0], alen)
  end
  return ffi_string(scope_p[0], n), vals[0], vals[1], vals[2] == 1, vals[3] >= 0, vals[4], addr
end

--- log_by_lua: keep the request's values: from nginx's module when it is loaded, else from the
--- variable ``log_var`` that joins them (LOG_FIELDS; one variable read: each further ngx.var
--- read would cost about as much as the buffering and the adding together). ``scope_var``: the
--- variable that holds the scope.
--- A draining worker (its timer ran for the last time) adds and merges the request at once.
function M.log(log_var, scope_var)
  local scope, bytes_in, bytes_out, new_conn, backend, ut_ms, addr, s
  if M.module then
    scope, bytes_in, bytes_out, new_conn, backend, ut_ms, addr = values(scope_var)
    if not scope then
      return
    end
  else
    s = ngx_var[log_var]
    if not s or byte(s, -1) == SEP then -- the scope is empty: not counted
      return
    end
  end
  -- $status and $request_time from the request itself, through the FFI: as a variable, each
  -- would cost nginx a formatted string
  local status, rt_ms = ngx.status, floor((now() - start_time()) * 1000 + 0.5)
  if rt_ms < 0 then
    rt_ms = 0
  end
  if draining then
    local mc
    if s then
      scope, mc, addr = add(status, rt_ms, parse(s))
    else
      scope, mc, addr = add(status, rt_ms, scope, bytes_in, bytes_out, new_conn, backend, ut_ms, addr)
    end
    local dict = ngx.shared.clb_metrics
    if dict then
      merge(dict, key_of(scope, "\2"), scopes[scope], NFIELDS, false)
      if mc then
        merge(dict, key_of(scope .. "\t" .. addr, "\3"), mc, MFIELDS, false)
      end
    end
    return
  end
  local j = npending + 1
  npending = j
  statuses[j], times[j] = status, rt_ms
  if s then
    joined[j] = s
  else
    b_scope[j], b_in[j], b_out[j], b_new[j], b_backend[j], b_ut[j], b_addr[j] =
      scope, bytes_in, bytes_out, new_conn, backend, ut_ms, addr
  end
  if j >= BATCH then
    add_pending()
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
  if dict then
    M.flush(true) -- this worker's counts up to now; the other workers' come within a second
  end
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
